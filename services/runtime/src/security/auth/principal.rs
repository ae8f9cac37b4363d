//! The caller of an RPC ([`Principal`]) and the checks of its bindings that handlers run
//! with what a request names: its CAD system, team and regions, and its scopes.

use std::collections::{BTreeSet, HashMap};

use tonic::{Code, Status};

use super::{
    AUTH_DOMAIN, CAD_SYSTEM_NOT_ALLOWED, CALLER_DETAILS_READ, CREDENTIALS_MISSING,
    REGION_NOT_ALLOWED, SCOPE_MISSING, TEAM_NOT_ALLOWED,
};
use crate::security::IdentityGrant;

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// A bearer JWT.
    Token,
    /// A client certificate (mTLS).
    Certificate,
    /// None: authentication is off in a development setup; every scope is granted.
    Development,
}

/// The caller of an RPC, as the auth layer established it. Handlers read it from the request
/// with [`Principal::of`] and check the bindings that depend on the request's content
/// ([`Principal::require_cad_system`], [`Principal::require_team`],
/// [`Principal::require_region`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`, or the certificate's identity.
    pub subject: String,
    /// Scopes by name (`incidents.submit`).
    pub scopes: BTreeSet<String>,
    /// The one CAD system this caller may act for, when bound to one.
    pub cad_system: Option<String>,
    /// The one team this caller may report for, when bound to one.
    pub team_id: Option<String>,
    /// The regions this caller is limited to; empty: every region.
    pub regions: Vec<String>,
    /// How the caller proved who it is.
    pub kind: CredentialKind,
    /// The error domain of the RPC being called (`relay.intake.v1`).
    pub(super) domain: &'static str,
}

impl Principal {
    /// The principal of a call in a development setup without authentication: every scope,
    /// no binding.
    #[must_use]
    pub fn development() -> Self {
        Self {
            subject: String::from("development"),
            scopes: BTreeSet::new(),
            cad_system: None,
            team_id: None,
            regions: Vec::new(),
            kind: CredentialKind::Development,
            domain: AUTH_DOMAIN,
        }
    }

    /// The principal the auth layer attached to a request.
    #[must_use]
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&Self> {
        request.extensions().get::<Self>()
    }

    /// Whether the principal holds `scope` (always, in development).
    #[must_use]
    pub fn has_scope(&self, scope: &str) -> bool {
        self.kind == CredentialKind::Development || self.scopes.contains(scope)
    }

    /// `Ok` when the principal holds `scope`, else PERMISSION_DENIED (`SCOPE_MISSING`).
    ///
    /// # Errors
    /// The status to return to the caller.
    pub fn require_scope(&self, scope: &str) -> Result<(), Status> {
        if self.has_scope(scope) {
            return Ok(());
        }
        Err(refusal(
            Code::PermissionDenied,
            self.domain,
            SCOPE_MISSING,
            format!("the credential lacks the scope `{scope}` this call requires"),
            Some(("scope", scope)),
        ))
    }

    /// `Ok` when the principal may act for `cad_system` (it is bound to no CAD, or to this
    /// one), else PERMISSION_DENIED (`CAD_SYSTEM_NOT_ALLOWED`).
    ///
    /// # Errors
    /// The status to return to the caller.
    pub fn require_cad_system(&self, cad_system: &str) -> Result<(), Status> {
        match &self.cad_system {
            Some(bound) if bound != cad_system => Err(refusal(
                Code::PermissionDenied,
                self.domain,
                CAD_SYSTEM_NOT_ALLOWED,
                "the credential is bound to another cad_system",
                Some(("cad_system", cad_system)),
            )),
            _ => Ok(()),
        }
    }

    /// `Ok` when the principal may report for `team_id`, else PERMISSION_DENIED
    /// (`TEAM_NOT_ALLOWED`).
    ///
    /// # Errors
    /// The status to return to the caller.
    pub fn require_team(&self, team_id: &str) -> Result<(), Status> {
        match &self.team_id {
            Some(bound) if bound != team_id => Err(refusal(
                Code::PermissionDenied,
                self.domain,
                TEAM_NOT_ALLOWED,
                "the credential is bound to another team",
                Some(("team_id", team_id)),
            )),
            _ => Ok(()),
        }
    }

    /// `Ok` unless the principal is bound to one team: a responder's device reports and
    /// confirms for its own team, and may not `action` (routing an incident, cancelling its
    /// routing: a dispatcher's or a CAD's acts), else PERMISSION_DENIED (`TEAM_NOT_ALLOWED`).
    ///
    /// # Errors
    /// The status to return to the caller.
    pub fn require_no_team(&self, action: &str) -> Result<(), Status> {
        match &self.team_id {
            Some(_) => Err(refusal(
                Code::PermissionDenied,
                self.domain,
                TEAM_NOT_ALLOWED,
                format!("a credential bound to one team may not {action}"),
                None,
            )),
            None => Ok(()),
        }
    }

    /// `Ok` when the principal may act in `region`, else PERMISSION_DENIED
    /// (`REGION_NOT_ALLOWED`).
    ///
    /// # Errors
    /// The status to return to the caller.
    pub fn require_region(&self, region: &str) -> Result<(), Status> {
        if self.allows_region(region) {
            return Ok(());
        }
        Err(refusal(
            Code::PermissionDenied,
            self.domain,
            REGION_NOT_ALLOWED,
            "the credential is limited to other regions",
            Some(("region", region)),
        ))
    }

    /// The principal of a call, for a handler: the one the auth layer attached. A call that
    /// reached a handler without one did not pass the layer (a server built without
    /// [`crate::server::ServiceHost`]); it is refused (UNAUTHENTICATED,
    /// `CREDENTIALS_MISSING`) rather than served as anyone.
    ///
    /// # Errors
    /// The status to return to the caller; `domain` is the service's error domain.
    pub fn of_call<T>(request: &tonic::Request<T>, domain: &'static str) -> Result<Self, Status> {
        Self::of(request).cloned().ok_or_else(|| {
            refusal(
                Code::Unauthenticated,
                domain,
                CREDENTIALS_MISSING,
                "this call needs a credential: a bearer token or a client certificate",
                None,
            )
        })
    }

    /// Whether the principal may read an incident's caller details (name, phone, callback
    /// number, narrative and notes): it holds [`CALLER_DETAILS_READ`], or it is the
    /// development principal.
    #[must_use]
    pub fn may_read_caller_details(&self) -> bool {
        self.has_scope(CALLER_DETAILS_READ)
    }

    /// Whether the principal may act for `cad_system` (bound to no CAD, or to this one).
    #[must_use]
    pub fn allows_cad_system(&self, cad_system: &str) -> bool {
        self.cad_system
            .as_deref()
            .is_none_or(|bound| bound == cad_system)
    }

    /// Whether the principal may act in `region` (limited to no region, or to this one).
    #[must_use]
    pub fn allows_region(&self, region: &str) -> bool {
        self.regions.is_empty() || self.regions.iter().any(|r| r == region)
    }

    /// The CAD-system filter of a read that may name one (ListIncidents): empty, it becomes
    /// the bound CAD (a bound credential reads only its own); named, it must be allowed.
    ///
    /// # Errors
    /// PERMISSION_DENIED (`CAD_SYSTEM_NOT_ALLOWED`) when it names another CAD.
    pub fn cad_system_filter(&self, requested: &str) -> Result<String, Status> {
        match (&self.cad_system, requested.is_empty()) {
            (Some(bound), true) => Ok(bound.clone()),
            _ => self
                .require_cad_system(requested)
                .map(|()| requested.to_owned()),
        }
    }

    /// The region filter of a read that may name one (ListIncidents, ListTeams,
    /// GetProgramReport): empty, it becomes the one region of a credential limited to one;
    /// named, it must be one of the credential's. A credential limited to several regions
    /// names one (or, where the RPC says so, gets its reads filtered instead).
    ///
    /// # Errors
    /// PERMISSION_DENIED (`REGION_NOT_ALLOWED`) for another region, or for none named by a
    /// credential limited to several.
    pub fn region_filter(&self, requested: &str) -> Result<String, Status> {
        match (self.regions.as_slice(), requested.is_empty()) {
            ([only], true) => Ok(only.clone()),
            _ => self
                .require_region(requested)
                .map(|()| requested.to_owned()),
        }
    }

    /// `Ok` when the principal may see a resource of `cad_system` that the caller named by
    /// its id only (an incident, an assignment); else the same refusal whether the resource
    /// belongs to another CAD or, with `None`, does not exist, so that a bound credential
    /// cannot learn which ids exist elsewhere. The refusal names no CAD.
    ///
    /// # Errors
    /// PERMISSION_DENIED (`CAD_SYSTEM_NOT_ALLOWED`).
    pub fn require_cad_system_of(&self, cad_system: Option<&str>) -> Result<(), Status> {
        match (&self.cad_system, cad_system) {
            (None, _) => Ok(()),
            (Some(bound), Some(cad)) if bound == cad => Ok(()),
            (Some(_), _) => Err(refusal(
                Code::PermissionDenied,
                self.domain,
                CAD_SYSTEM_NOT_ALLOWED,
                "the credential is bound to a cad_system, and this id names none of its \
                 resources",
                None,
            )),
        }
    }

    /// Whether a resource named by id must be read to decide ([`Self::require_owner`]): the
    /// principal is bound to a CAD or limited to regions.
    #[must_use]
    pub fn needs_owner(&self) -> bool {
        self.is_cad_bound() || self.is_region_bound()
    }

    /// `Ok` when the principal may act on a resource named by id whose owner is
    /// `(cad_system, region)`, or `None` when no resource has the id:
    /// [`Self::require_cad_system_of`], then [`Self::require_region`].
    ///
    /// # Errors
    /// PERMISSION_DENIED (`CAD_SYSTEM_NOT_ALLOWED`, `REGION_NOT_ALLOWED`).
    pub fn require_owner(&self, owner: Option<(&str, &str)>) -> Result<(), Status> {
        self.require_cad_system_of(owner.map(|(cad_system, _)| cad_system))?;
        match owner {
            Some((_, region)) => self.require_region(region),
            None => Ok(()),
        }
    }

    /// Whether the principal is bound to one CAD system.
    #[must_use]
    pub fn is_cad_bound(&self) -> bool {
        self.cad_system.is_some()
    }

    /// Whether the principal is limited to some regions.
    #[must_use]
    pub fn is_region_bound(&self) -> bool {
        !self.regions.is_empty()
    }

    /// A principal named `subject` with no scope nor binding, for tests of the layers.
    #[cfg(test)]
    pub(crate) fn for_tests(subject: &str, kind: CredentialKind) -> Self {
        Self {
            subject: subject.to_owned(),
            kind,
            ..Self::development()
        }
    }

    pub(super) fn from_grant(subject: String, grant: &IdentityGrant, kind: CredentialKind) -> Self {
        Self {
            subject,
            scopes: grant.scopes.iter().cloned().collect(),
            cad_system: grant.cad_system.clone(),
            team_id: grant.team_id.clone(),
            regions: grant.regions.clone(),
            kind,
            domain: AUTH_DOMAIN,
        }
    }
}

/// A refusal with a `google.rpc.ErrorInfo` (`reason`, `domain`, one metadata entry).
pub(super) fn refusal(
    code: Code,
    domain: &'static str,
    reason: &str,
    message: impl Into<String>,
    metadata: Option<(&str, &str)>,
) -> Status {
    let metadata: HashMap<String, String> = metadata
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
    crate::error::status(code, domain, reason, message, metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_refuse_other_cads_teams_and_regions() {
        let principal = Principal {
            cad_system: Some(String::from("cad-a")),
            team_id: Some(String::from("t1")),
            regions: vec![String::from("north")],
            kind: CredentialKind::Token,
            ..Principal::development()
        };
        assert!(principal.require_cad_system("cad-a").is_ok());
        let status = principal
            .require_cad_system("cad-b")
            .expect_err("another CAD");
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(principal.require_team("t2").is_err());
        assert!(principal.require_region("south").is_err());
        assert!(principal.require_region("north").is_ok());
        assert!(principal.require_scope("incidents.read").is_err());
        assert!(Principal::development().require_scope("admin").is_ok());
    }

    #[test]
    fn a_bound_credential_reads_its_own_cad_and_learns_nothing_of_others() {
        let bound = Principal {
            cad_system: Some(String::from("cad-a")),
            kind: CredentialKind::Token,
            ..Principal::development()
        };
        assert_eq!(bound.cad_system_filter("").expect("filled in"), "cad-a");
        assert_eq!(bound.cad_system_filter("cad-a").expect("its own"), "cad-a");
        assert!(bound.cad_system_filter("cad-b").is_err());
        let free = Principal::development();
        assert_eq!(free.cad_system_filter("").expect("any"), "");
        assert!(bound.require_cad_system_of(Some("cad-a")).is_ok());
        // Another CAD's resource and no resource at all get one and the same answer.
        let other = bound
            .require_cad_system_of(Some("cad-b"))
            .expect_err("other");
        let missing = bound.require_cad_system_of(None).expect_err("missing");
        assert_eq!(other.code(), Code::PermissionDenied);
        assert_eq!(other.code(), missing.code());
        assert_eq!(other.message(), missing.message());
        assert_eq!(other.details(), missing.details());
        assert!(free.require_cad_system_of(None).is_ok());
    }

    #[test]
    fn a_region_filter_is_filled_in_or_checked() {
        let one = Principal {
            regions: vec![String::from("north")],
            kind: CredentialKind::Token,
            ..Principal::development()
        };
        assert_eq!(one.region_filter("").expect("filled in"), "north");
        assert!(one.region_filter("south").is_err());
        let two = Principal {
            regions: vec![String::from("north"), String::from("east")],
            ..one.clone()
        };
        assert!(two.region_filter("").is_err(), "several: name one");
        assert_eq!(two.region_filter("east").expect("its own"), "east");
        assert_eq!(Principal::development().region_filter("").expect("any"), "");
    }

    #[test]
    fn caller_details_need_their_scope_except_in_development() {
        assert!(Principal::development().may_read_caller_details());
        let mut reader = Principal {
            kind: CredentialKind::Token,
            ..Principal::development()
        };
        assert!(!reader.may_read_caller_details());
        reader.scopes.insert(CALLER_DETAILS_READ.to_owned());
        assert!(reader.may_read_caller_details());
    }

    #[test]
    fn a_call_without_a_principal_is_refused() {
        let request = tonic::Request::new(());
        let status = Principal::of_call(&request, "relay.test.v1").expect_err("no principal");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
}
