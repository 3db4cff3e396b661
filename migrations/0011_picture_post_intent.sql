-- reason: a bot process killed after the platform created a picture's message but before its reference was stored left no trace of the post, so the next attempt posted the picture again; a started post with no reference marks the picture "in doubt", and the adapter looks for its message before posting again.
-- When the first attempt to post the picture began (NULL: never tried); kept, not renewed, by later attempts: the
-- message may have been created by any attempt since, so the earliest start bounds where to look for it.
ALTER TABLE pictures ADD COLUMN post_started_at TEXT;
