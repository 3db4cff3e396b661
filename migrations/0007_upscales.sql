-- reason: an upscale is a job made from one stored picture: which picture, so a picture is upscaled once and its upscale goes with it.
-- NULL for every other job.  ON DELETE CASCADE: deleting the picture (its job, its person's /forget) deletes the
-- upscale job too, and through it the upscaled picture and its ratings, so nothing of a forgotten picture stays.
ALTER TABLE jobs ADD COLUMN upscale_of_picture_id INTEGER REFERENCES pictures (id) ON DELETE CASCADE;
CREATE INDEX jobs_by_upscaled_picture ON jobs (upscale_of_picture_id) WHERE upscale_of_picture_id IS NOT NULL;
