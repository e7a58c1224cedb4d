//! The one table of SQLSTATEs after which trying again on a new connection may succeed. Every PostgreSQL error
//! classification (control connection, snapshot workers, replication stream) goes through [`is_transient`], so the
//! three can no longer drift apart.
//!
//! Transient: the connection broke or the server is going away or not accepting connections yet; the slot is held
//! by another process (a previous instance still shutting down, or the active instance this one stands by for); a
//! statement cancelled by a recovery conflict on a standby (40001).
//! Everything else is definite: it is about the statement, the data, the configuration or the privileges, and
//! retrying would fail the same way (57P04, the database was dropped, among them).

/// Whether an error with this SQLSTATE is worth a new connection.
pub fn is_transient(code: &str) -> bool {
    // Class 08: connection exception (and protocol violations on the wire).
    code.starts_with("08")
        || matches!(
            code,
            "57P01" // admin_shutdown: the server is shutting down (or the backend was terminated)
                | "57P02" // crash_shutdown: another backend crashed, the server restarts
                | "57P03" // cannot_connect_now: the server is starting up or in recovery
                | "57P05" // idle_session_timeout
                | "53300" // too_many_connections
                | "55006" // object_in_use: the replication slot is active for another process
                | "40001" // on a standby, "canceling statement due to conflict with recovery": a new connection may
                          // succeed; if the conflict invalidated the slot, the next start says so with the cause
        )
}

#[cfg(test)]
mod tests {
    use super::is_transient;

    #[test]
    fn connection_and_server_restarts_are_transient_the_rest_definite() {
        for code in ["08000", "08006", "08P01", "57P01", "57P02", "57P03", "57P05", "53300", "55006", "40001"] {
            assert!(is_transient(code), "{code}");
        }
        // database dropped, permission, missing object, syntax, data, invalidated slot, unique violation
        for code in ["57P04", "42501", "42704", "42601", "22P02", "55000", "23505", "28P01", "3D000"] {
            assert!(!is_transient(code), "{code}");
        }
    }
}
