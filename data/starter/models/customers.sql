-- One row per customer, keyed by e-mail.
SELECT
    lower(trim(email)) AS email,
    name,
    company,
    plan,
    CAST(mrr AS DOUBLE) AS mrr,
    updated_at
FROM people
