//! Caller contact, narrative and notes never reach the logs, at any level: every log line of a
//! submit, an update with a note, and a close is captured at TRACE and searched.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};

use relay_proto::intake::{
    CallerContact, CloseIncidentRequest, CloseOutcome, UpdateIncidentRequest,
};
use relay_tests::TestDatabase;
use support::{FakeRouting, TestIntake, submission};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

const NARRATIVE: &str = "NARRATIVE-SECRET man on the bridge";
const NAME: &str = "CALLERNAME-SECRET";
const PHONE: &str = "+15415550199";
const CALLBACK: &str = "+15415550777";
const NOTE: &str = "NOTE-SECRET he has a dog";
const CLOSE_NOTE: &str = "CLOSENOTE-SECRET took him to the shelter";

#[tokio::test]
async fn no_caller_text_appears_in_logs_at_any_level() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(capture.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    let mut app = TestIntake::start(db.url(), &routing, None, &[], None).await;
    let mut request = submission("PRIV-1", "EDP");
    request.narrative = NARRATIVE.into();
    request.caller = Some(CallerContact {
        name: NAME.into(),
        phone: PHONE.into(),
        callback_number: Some(CALLBACK.into()),
    });
    let incident = app
        .client
        .submit_incident(request)
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap();
    assert_eq!(
        incident.narrative, NARRATIVE,
        "authorised clients get it back"
    );
    app.client
        .update_incident(UpdateIncidentRequest {
            request_id: "priv-upd".into(),
            incident_id: incident.incident_id.clone(),
            notes: Some(NOTE.into()),
            add_risk_flags: vec![relay_proto::intake::RiskFlag::Weapons as i32],
            ..UpdateIncidentRequest::default()
        })
        .await
        .unwrap();
    app.client
        .close_incident(CloseIncidentRequest {
            request_id: "priv-close".into(),
            incident_id: incident.incident_id.clone(),
            outcome: CloseOutcome::ResolvedOnScene as i32,
            referral_ids: vec![],
            notes: CLOSE_NOTE.into(),
        })
        .await
        .unwrap();
    app.stop().await;

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).to_string();
    assert!(logs.contains("incident accepted"), "the capture works");
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "low levels were captured"
    );
    for secret in [
        NARRATIVE,
        "NARRATIVE-SECRET",
        NAME,
        PHONE,
        "5415550199",
        CALLBACK,
        NOTE,
        "NOTE-SECRET",
        CLOSE_NOTE,
        "CLOSENOTE-SECRET",
    ] {
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
    }
}
