//! The macros that write, once, the storage code every service with a SQL store has: its
//! `SqlStore<DB>` struct and the `Bounded` implementation of its store trait.

/// Implements a service's store trait for [`Bounded<S>`](super::Bounded): each operation
/// listed runs the same operation of `S` under [`Bounded::bound`](super::Bounded::bound); one
/// marked `#[unbounded]` (a bulk scan or purge
/// that may rightly take longer) runs as it is. Attributes before `impl` go on the impl (a
/// trait declared with `#[tonic::async_trait]` needs it there too).
///
/// ```ignore
/// relay_runtime::bounded_store! {
///     #[tonic::async_trait]
///     impl Store {
///         async fn incident(&self, incident_id: &str) -> Result<Option<Incident>, StoreError>;
///         #[unbounded]
///         async fn prune(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
///     }
/// }
/// ```
#[macro_export]
macro_rules! bounded_store {
    (
        $(#[$attr:meta])*
        impl $store:ident {
            $(
                $(#[$unbounded:ident])?
                async fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;
            )*
        }
    ) => {
        $(#[$attr])*
        impl<S: $store> $store for $crate::storage::Bounded<S> {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    $crate::bounded_store!(@run self $(#[$unbounded])? $name($($arg),*))
                }
            )*
        }
    };
    (@run $self:ident $name:ident($($arg:ident),*)) => {
        $self.bound().run($self.inner().$name($($arg),*)).await
    };
    (@run $self:ident #[unbounded] $name:ident($($arg:ident),*)) => {
        $self.inner().$name($($arg),*).await
    };
}

/// Defines a service's store over one sqlx database, `$name<DB>`: a pool, cloned and
/// debug-printed with it, built by `new(pool)` and read by `pool()`. Each service implements
/// its store trait once for it, generic over the database (its `store/sql_store.rs`), so the
/// struct itself is the same everywhere and written here once.
#[macro_export]
macro_rules! sql_store {
    ($(#[$attr:meta])* $vis:vis struct $name:ident;) => {
        $(#[$attr])*
        $vis struct $name<DB: ::sqlx::Database> {
            pool: ::sqlx::Pool<DB>,
        }

        impl<DB: ::sqlx::Database> Clone for $name<DB> {
            fn clone(&self) -> Self {
                Self {
                    pool: self.pool.clone(),
                }
            }
        }

        impl<DB: ::sqlx::Database> std::fmt::Debug for $name<DB> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("pool", &self.pool)
                    .finish()
            }
        }

        impl<DB: ::sqlx::Database> $name<DB> {
            /// A store on `pool` (migrated separately; on PostgreSQL its search_path is the
            /// service's schema).
            #[must_use]
            pub fn new(pool: ::sqlx::Pool<DB>) -> Self {
                Self { pool }
            }

            /// The pool.
            #[must_use]
            pub fn pool(&self) -> &::sqlx::Pool<DB> {
                &self.pool
            }
        }
    };
}
