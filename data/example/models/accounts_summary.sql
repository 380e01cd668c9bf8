-- One row per company: how many paying people and how much revenue.
SELECT
    company,
    count(*)              AS people,
    sum(mrr)              AS mrr,
    max(updated_at)       AS last_change
FROM customers
WHERE company IS NOT NULL
GROUP BY company
