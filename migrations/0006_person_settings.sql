-- reason: per-person defaults (/settings): a person's default style, mode, picture count and prompt suffix.
-- One row per person, gone with them (/forget deletes the user, and this row with it).  A NULL column means
-- "no default": the order's own option, or the style's, applies.  The values are checked by the chat core
-- when they are set and again when an order uses them (a style may leave the catalogue meanwhile).
CREATE TABLE person_settings (
    user_id INTEGER PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    style TEXT,
    mode TEXT CHECK (mode IS NULL OR mode IN ('fast', 'quality')),
    picture_count INTEGER CHECK (picture_count IS NULL OR picture_count >= 1),
    prompt_suffix TEXT,
    updated_at TEXT NOT NULL
);
