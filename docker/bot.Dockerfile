# Chat bots (Discord, Telegram): slim, no torch. The engine's code is copied
# for engine/contracts.py and the style catalogue only; its heavy dependencies
# are not installed, and the bot never imports them (tests/test_import_rules.py).
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY requirements.lock requirements-bot.txt ./
RUN pip install -r requirements-bot.txt
COPY pyproject.toml README.md ./
COPY bot bot
COPY mmpp mmpp
COPY migrations migrations
RUN pip install --no-deps . && useradd --uid 1000 mmpp && mkdir -p /data && chown mmpp /data
USER mmpp
CMD ["mmpp", "run", "--no-worker"]
