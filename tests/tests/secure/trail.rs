//! The audit trail of a service the security tests started (issue 14): a refusal is
//! recorded by the service's background writer, a moment after it is answered, so a test
//! polls the trail until the records it expects are there, with a deadline.

use std::{collections::BTreeMap, time::Duration};

use relay_runtime::{audit::AuditSink, storage::Database};
use secrecy::SecretString;

use super::{Pki, database_url};

/// What a record of a refusal says: the RPC's full method, the outcome's code name, the
/// ErrorInfo reason and the principal.
pub type Refusal = (String, &'static str, &'static str, &'static str);

/// The trail of `binary`, as [`super::start`] started it (its SQLite file).
pub fn trail(pki: &Pki, binary: &str) -> AuditSink {
    let url = SecretString::from(database_url(pki, binary));
    AuditSink::new(Database::open(&url, "audit", 1).expect("open the trail"))
}

/// Waits until `trail` holds a record of each refusal of `expected`, as many times as it is
/// listed, then checks the whole chain.
///
/// # Panics
/// After `limit`, naming what is missing; when the chain is broken.
pub async fn wait_for(trail: &AuditSink, expected: &[Refusal], limit: Duration) {
    let mut wanted: BTreeMap<(&str, &str, &str, &str), usize> = BTreeMap::new();
    for (rpc, outcome, reason, principal) in expected {
        *wanted
            .entry((rpc.as_str(), outcome, reason, principal))
            .or_default() += 1;
    }
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut found: BTreeMap<(String, String, String, String), usize> = BTreeMap::new();
        trail
            .walk(
                0,
                (i64::MIN, i64::MAX),
                |entry| -> Result<(), sqlx::Error> {
                    let record = &entry.record;
                    *found
                        .entry((
                            record.rpc.clone(),
                            record.outcome.clone(),
                            record.reason.clone(),
                            record.principal.clone(),
                        ))
                        .or_default() += 1;
                    Ok(())
                },
            )
            .await
            .expect("read the trail");
        let missing: Vec<_> = wanted
            .iter()
            .filter(|((rpc, outcome, reason, principal), count)| {
                let key = (
                    (*rpc).to_owned(),
                    (*outcome).to_owned(),
                    (*reason).to_owned(),
                    (*principal).to_owned(),
                );
                found.get(&key).copied().unwrap_or_default() < **count
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not recorded after {limit:?}: {missing:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    trail
        .verify()
        .await
        .expect("read the trail")
        .expect("a valid chain");
}
