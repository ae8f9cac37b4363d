//! Tenancy of an RPC that names a resource by id alone (an incident, an assignment): the
//! resource must be read to learn its owner, but only for a principal bound to a CAD or
//! limited to regions. Every service that serves such RPCs asks [`Principal::require_owner_of`]
//! rather than writing the read-then-check again.

use std::future::Future;

use tonic::Status;

use crate::security::auth::Principal;

impl Principal {
    /// [`Principal::require_owner`] of the resource `read` finds, whose owner
    /// `(cad_system, region)` is `owner` of it. An unbound principal passes without the read
    /// (the RPC itself answers NOT_FOUND for an unknown id); a CAD-bound one gets the same
    /// refusal for another CAD's resource as for an unknown id.
    ///
    /// # Errors
    /// The read's error, or PERMISSION_DENIED (`CAD_SYSTEM_NOT_ALLOWED`, `REGION_NOT_ALLOWED`).
    pub async fn require_owner_of<T, Fut>(
        &self,
        read: impl FnOnce() -> Fut,
        owner: impl FnOnce(&T) -> (&str, &str),
    ) -> Result<(), Status>
    where
        Fut: Future<Output = Result<Option<T>, Status>>,
    {
        if !self.needs_owner() {
            return Ok(());
        }
        let found = read().await?;
        self.require_owner(found.as_ref().map(owner))
    }
}
