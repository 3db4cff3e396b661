# Chat bots (Discord, Telegram): slim, no torch and no engine code. The bot
# needs only the torch-free kernel in mmpp/ (contract, errors, style catalogue);
# tests/test_import_rules.py checks that it never imports the engine.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# requirements-bot.txt names the chat side's packages; requirements.lock (the runtime set) pins them.
COPY requirements.lock requirements-bot.txt ./
RUN pip install -r requirements-bot.txt
COPY pyproject.toml README.md ./
COPY bot bot
COPY mmpp mmpp
COPY migrations migrations
RUN pip install --no-deps . && useradd --uid 1000 mmpp && mkdir -p /data && chown mmpp /data
USER mmpp
CMD ["mmpp", "run", "--no-worker"]
