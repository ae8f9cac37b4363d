//! Fault injection for the audit trail: a trigger that makes every insert into a service's
//! `audit_log` fail, so a test can check that a write whose record cannot be written is not
//! written either (issue 14: no change without its record).

/// Makes inserts into `schema.audit_log` fail (PostgreSQL), until [`allow_audit`].
///
/// # Panics
/// When PostgreSQL refuses.
pub async fn refuse_audit(pool: &sqlx::PgPool, schema: &str) {
    for sql in [
        format!(
            "CREATE FUNCTION {schema}.refuse_audit() RETURNS trigger LANGUAGE plpgsql \
             AS $$ BEGIN RAISE EXCEPTION 'audit refused by the test'; END $$"
        ),
        format!(
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON {schema}.audit_log \
             FOR EACH ROW EXECUTE FUNCTION {schema}.refuse_audit()"
        ),
    ] {
        sqlx::query(&sql)
            .execute(pool)
            .await
            .unwrap_or_else(|error| panic!("{sql}: {error}"));
    }
}

/// Undoes [`refuse_audit`].
///
/// # Panics
/// When PostgreSQL refuses.
pub async fn allow_audit(pool: &sqlx::PgPool, schema: &str) {
    let sql = format!("DROP TRIGGER refuse_audit ON {schema}.audit_log");
    sqlx::query(&sql)
        .execute(pool)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"));
}
