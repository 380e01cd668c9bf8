-- One row per person, keyed by normalised e-mail, with their account's details.
SELECT
    lower(trim(p.email))      AS email,
    p.name,
    p.company,
    p.plan,
    CAST(p.mrr AS DOUBLE)     AS mrr,
    a.industry,
    a.seats,
    p.updated_at
FROM people p
LEFT JOIN accounts a ON a.company = p.company
