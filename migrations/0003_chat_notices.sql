-- reason: remember which chats were told something once per chat (a group where reactions never reach the bot), across restarts.
CREATE TABLE chat_notices (
    platform TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    notice TEXT NOT NULL,
    given_at TEXT NOT NULL,
    PRIMARY KEY (platform, chat_id, notice)
);
