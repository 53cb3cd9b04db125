-- no-transaction
-- Replaced by `inbox_own_msg` (0010). Dropped concurrently, so that sends
-- do not wait for the lock. A logic pod from before 0010, still running
-- during a rolling upgrade, answers a retransmit by reading the sender's
-- inbox entries through the primary key until it is replaced.
DROP INDEX CONCURRENTLY IF EXISTS inbox_msg;
