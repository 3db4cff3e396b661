-- reason: style variants tried on live traffic: which variant each job rendered, operators' pauses and eval floors, and promotions with their evidence.
-- The variant of its style the job rendered; every picture of a job shares it.  Jobs before variants rendered the style as written.
ALTER TABLE jobs ADD COLUMN variant TEXT NOT NULL DEFAULT 'base';
-- The assignment's question on every order: the ratings of one style's pictures, by variant and rater.
CREATE INDEX jobs_by_style ON jobs (style, variant);

-- What an operator decided about one variant: paused (not served), or below the floor of the measured figures of
-- `mmpp eval` (not served and never promoted).  No row: active and eligible.
CREATE TABLE variant_controls (
    style TEXT NOT NULL,
    variant TEXT NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
    -- Why the variant is not eligible (the measured figure against the floor), or NULL when it is.
    ineligible_reason TEXT,
    changed_at TEXT NOT NULL,
    PRIMARY KEY (style, variant)
);

-- Every time a variant became its style's default: by the ratings (with the posterior as evidence) or by an
-- operator.  The style's default is its newest promotion not rolled back; with none, its variants share traffic.
CREATE TABLE variant_promotions (
    id INTEGER PRIMARY KEY,
    style TEXT NOT NULL,
    variant TEXT NOT NULL,
    decided_by TEXT NOT NULL CHECK (decided_by IN ('ratings', 'operator')),
    -- JSON: ratings per variant, means, the posterior probability of being best, the rule's thresholds.
    evidence TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    rolled_back_at TEXT
);
CREATE INDEX variant_promotions_by_style ON variant_promotions (style, id);
