-- Whether intake confirmed the referral's incident exists when the referral was created
-- (1), or it was recorded unchecked (0: checking off, or intake unreachable in time).
ALTER TABLE referrals ADD COLUMN incident_checked BIGINT NOT NULL DEFAULT 0;
