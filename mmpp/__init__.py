"""The ``mmpp`` command: one entry point over the bot and the engine.

It lives outside both packages because it is the one place allowed to reach
into each; it imports a side only when its subcommand runs, so ``mmpp chat``
never loads torch and ``mmpp worker`` never loads discord.
"""
