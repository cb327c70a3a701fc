//! Redis for the cluster tests: a testcontainers container, or an existing server
//! named by `SLUICE_TEST_REDIS_URL`.
