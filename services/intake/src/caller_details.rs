//! Caller details on the way out (issue 14): the caller's contact, the narrative, note texts
//! and closing notes reach only a principal with `caller.details.read`. Every other principal
//! gets the incident with those fields empty and `caller_details_withheld` set, on every RPC
//! that returns an incident (writes included) and in the EIDO document. What is stored never
//! changes: this is a view of the answer.

use relay_proto::intake::Incident;
use relay_runtime::security::auth::Principal;

/// Empties the caller's details of `incident` and marks them withheld. Note entries stay,
/// with their time, so a reader still sees that notes were added and when.
pub fn withhold(incident: &mut Incident) {
    incident.caller = None;
    incident.narrative.clear();
    incident.close_notes.clear();
    for note in &mut incident.notes {
        note.text.clear();
    }
    incident.caller_details_withheld = true;
}

/// `incident` as `principal` may see it: unchanged with `caller.details.read` (or in
/// development), else [`withhold`]n.
pub fn present(principal: &Principal, incident: &mut Incident) {
    if !principal.may_read_caller_details() {
        withhold(incident);
    }
}

/// [`present`] for an optional incident (the responses' `incident` field).
pub fn present_opt(principal: &Principal, incident: Option<&mut Incident>) {
    if let Some(incident) = incident {
        present(principal, incident);
    }
}

#[cfg(test)]
mod tests {
    use relay_proto::intake::{CallerContact, IncidentNote};

    use super::*;

    fn detailed() -> Incident {
        Incident {
            incident_id: "i-1".into(),
            cad_system: "cad-a".into(),
            narrative: "caller says ...".into(),
            caller: Some(CallerContact {
                name: "Ada".into(),
                phone: "+15415550100".into(),
                callback_number: Some("+15415550101".into()),
            }),
            notes: vec![IncidentNote {
                text: "neighbour is the caller's brother".into(),
                create_time: Some(prost_types::Timestamp {
                    seconds: 10,
                    nanos: 0,
                }),
            }],
            close_notes: "took him to the clinic".into(),
            address: "1 Main St".into(),
            ..Incident::default()
        }
    }

    #[test]
    fn without_the_scope_the_details_are_empty_and_marked() {
        let mut token = Principal::development();
        token.kind = relay_runtime::security::auth::CredentialKind::Token;
        let mut incident = detailed();
        present(&token, &mut incident);
        assert!(incident.caller.is_none());
        assert!(incident.narrative.is_empty());
        assert!(incident.close_notes.is_empty());
        assert_eq!(incident.notes.len(), 1, "the note entry stays");
        assert!(incident.notes[0].text.is_empty());
        assert!(incident.notes[0].create_time.is_some());
        assert!(incident.caller_details_withheld);
        // Everything else is left as it was.
        assert_eq!(incident.address, "1 Main St");
        assert_eq!(incident.cad_system, "cad-a");

        // An incident without details gets the marker too: it tells nothing.
        let mut bare = Incident::default();
        present(&token, &mut bare);
        assert!(bare.caller_details_withheld);
    }

    #[test]
    fn with_the_scope_or_in_development_everything_is_shown() {
        let mut reader = Principal::development();
        reader.kind = relay_runtime::security::auth::CredentialKind::Token;
        reader
            .scopes
            .insert(relay_runtime::security::auth::CALLER_DETAILS_READ.to_owned());
        for principal in [reader, Principal::development()] {
            let mut incident = detailed();
            present(&principal, &mut incident);
            assert_eq!(incident, detailed());
            assert!(!incident.caller_details_withheld);
        }
    }
}
