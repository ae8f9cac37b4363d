//! Typed configuration in layers: defaults, then an optional TOML file, then `RELAY_*`
//! environment variables (the environment wins).
//!
//! The top-level keys are the operator's contract in DESIGN.md: `RELAY_LISTEN`,
//! `RELAY_DATABASE_URL`, `RELAY_REDIS_URL`, `RELAY_ROUTING_ENDPOINT`,
//! `RELAY_AVAILABILITY_ENDPOINT`, `RELAY_DIRECTORY_ENDPOINT`, `RELAY_INTAKE_ENDPOINT` and
//! `RELAY_LOG`. Nested settings use a double underscore, e.g.
//! `RELAY_SERVER__REQUEST_TIMEOUT_MS=5000` sets `[server] request_timeout_ms = 5000`.
//! A service reads its own section with [`Config::section`].

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, de::DeserializeOwned};

mod settings;
pub use settings::*;

/// The default ports of the four services, in the order intake, availability, routing,
/// directory.
pub const DEFAULT_PORTS: [(&str, u16); 4] = [
    ("intake", 50051),
    ("availability", 50052),
    ("routing", 50053),
    ("directory", 50054),
];

/// The default admin (metrics) ports, by service short name.
pub const DEFAULT_ADMIN_PORTS: [(&str, u16); 4] = [
    ("intake", 9451),
    ("availability", 9452),
    ("routing", 9453),
    ("directory", 9454),
];

/// The default port of a service by its short name (`intake`, `routing`, ...).
#[must_use]
pub fn default_port(service: &str) -> Option<u16> {
    DEFAULT_PORTS
        .iter()
        .find(|(name, _)| *name == service)
        .map(|(_, port)| *port)
}

/// A configuration that could not be loaded. The message names the key and where it came from.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    /// A configuration error about one key.
    #[must_use]
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    fn from_figment(error: figment::Error) -> Self {
        let messages: Vec<String> = error.into_iter().map(|e| describe(&e)).collect();
        Self(messages.join("; "))
    }

    /// As [`Self::from_figment`] for an error read inside the section `section`: figment
    /// reports such a path with the section last (`bogus_key.intake`), which would name the
    /// wrong variable; the section goes first (`intake.bogus_key`, RELAY_INTAKE__BOGUS_KEY).
    fn from_section(error: figment::Error, section: &str) -> Self {
        let messages: Vec<String> = error
            .into_iter()
            .map(|mut e| {
                if e.path.last().map(String::as_str) == Some(section) && e.path.len() > 1 {
                    e.path.pop();
                }
                if e.path.first().map(String::as_str) != Some(section) {
                    e.path.insert(0, section.to_owned());
                }
                describe(&e)
            })
            .collect();
        Self(messages.join("; "))
    }
}

/// One figment error as "key (origin): what is wrong", on a single line. The origin is the
/// environment variable or the file the value came from.
fn describe(error: &figment::Error) -> String {
    let key = if error.path.is_empty() {
        String::from("<root>")
    } else {
        error.path.join(".")
    };
    let origin = match (&error.metadata, &error.profile) {
        (Some(metadata), _) if metadata.name.contains("environment variable") => {
            format!(
                "environment variable RELAY_{}",
                error.path.join("__").to_uppercase()
            )
        }
        (Some(metadata), Some(profile)) => {
            let keys: Vec<&str> = error.path.iter().map(String::as_str).collect();
            let origin = metadata.interpolate(profile, &keys);
            match &metadata.source {
                Some(source) => format!("{origin} in {source}"),
                None => format!("{origin} from {}", metadata.name),
            }
        }
        (Some(metadata), None) => metadata.name.to_string(),
        _ => String::from("defaults"),
    };
    format!("invalid value for `{key}` ({origin}): {}", error.kind)
}

/// An address to listen on. Accepts `host:port`, `[v6]:port` and `:port` (all interfaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim();
        if let Some(port) = value.strip_prefix(':') {
            let port: u16 = port
                .parse()
                .map_err(|_| format!("`{value}` is not a port number"))?;
            return Ok(Self(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                port,
            )));
        }
        value
            .parse()
            .map(Self)
            .map_err(|_| format!("`{value}` is not an address such as 0.0.0.0:50051 or :50051"))
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Figment turns `RELAY_LISTEN=50051` into a number; accept that as a port too.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Port(u16),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
            Raw::Port(port) => Ok(Self(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                port,
            ))),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

fn default_log() -> String {
    String::from("info")
}

/// A loaded configuration: the shared [`Settings`] and the layers they came from, from which a
/// service reads its own section.
#[derive(Debug, Clone)]
pub struct Config {
    /// The service this configuration was loaded for (`intake`, `routing`, ...).
    pub service: &'static str,
    /// The settings every service shares.
    pub settings: Settings,
    figment: Figment,
    operator: bool,
}

impl Config {
    /// Whether TLS and authentication may be off: in a development setup
    /// (`insecure_dev`), or for a configuration built in code alone, with neither a file nor
    /// the environment (a test, or a program embedding a service, which chooses its own
    /// transport). What an operator gives (a file, `RELAY_*` variables, so every binary)
    /// follows the secure default. See [`crate::security::SecuritySettings::posture`].
    #[must_use]
    pub fn insecure_allowed(&self) -> bool {
        self.settings.insecure_dev || !self.operator
    }

    /// Starts a configuration for `service` (its short name) with the documented defaults.
    #[must_use]
    pub fn builder(service: &'static str) -> ConfigBuilder {
        let port = default_port(service).unwrap_or(0);
        let mut figment = Figment::new()
            .merge(Serialized::default("listen", format!("0.0.0.0:{port}")))
            .merge(Serialized::default("log", "info"));
        for (name, port) in DEFAULT_PORTS {
            figment = figment.merge(Serialized::default(
                &format!("{name}_endpoint"),
                format!("http://127.0.0.1:{port}"),
            ));
        }
        ConfigBuilder {
            service,
            figment,
            operator: false,
        }
    }

    /// Loads the configuration of `service` from an optional TOML file and the environment.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key and its source when a value is missing or invalid.
    pub fn load(service: &'static str, file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder = Self::builder(service);
        if let Some(file) = file {
            builder = builder.file(file)?;
        }
        builder.env().build()
    }

    /// Reads the service's own section, e.g. `[routing]` (`RELAY_ROUTING__*`); a missing
    /// section gives the type's defaults.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key when a value is invalid.
    pub fn section<T: DeserializeOwned + Default>(&self, key: &str) -> Result<T, ConfigError> {
        if self.figment.contains(key) {
            self.figment
                .extract_inner(key)
                .map_err(|e| ConfigError::from_section(e, key))
        } else {
            Ok(T::default())
        }
    }

    /// The database URL, or an error naming `RELAY_DATABASE_URL` when it is not set.
    ///
    /// # Errors
    /// When `database_url` is not configured.
    pub fn database_url(&self) -> Result<&SecretString, ConfigError> {
        self.settings.database_url.as_ref().ok_or_else(|| {
            ConfigError::new(format!(
                "missing value for `database_url` (RELAY_DATABASE_URL): relay-{} needs a PostgreSQL or SQLite URL",
                self.service
            ))
        })
    }

    /// Where Redis is (`RELAY_REDIS_URL`, `RELAY_REDIS_CLUSTER`): a single server or a cluster.
    ///
    /// # Errors
    /// When `redis_url` is not configured or invalid.
    pub fn redis_target(&self) -> Result<crate::redis_link::RedisTarget, ConfigError> {
        crate::redis_link::RedisTarget::open_with_tls(
            secrecy::ExposeSecret::expose_secret(self.redis_url()?),
            self.settings.redis_cluster,
            self.redis_tls()?,
        )
        .map_err(|error| ConfigError::new(format!("invalid value for `redis_url`: {error}")))
    }

    /// The CA and client certificate for `rediss://`, read from their files, or `None` when
    /// none is configured.
    fn redis_tls(&self) -> Result<Option<crate::redis_link::RedisTls>, ConfigError> {
        let read = |key: &str, path: &Option<std::path::PathBuf>| {
            path.as_ref()
                .map(|path| {
                    std::fs::read(path).map_err(|error| {
                        ConfigError::new(format!(
                            "invalid value for `{key}`: cannot read {}: {error}",
                            path.display()
                        ))
                    })
                })
                .transpose()
        };
        let settings = &self.settings;
        let ca = read("redis_ca_file", &settings.redis_ca_file)?;
        let client = match (
            read("redis_cert_file", &settings.redis_cert_file)?,
            read("redis_key_file", &settings.redis_key_file)?,
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "missing value for `redis_key_file` (RELAY_REDIS_KEY_FILE): `redis_cert_file` needs its key",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "missing value for `redis_cert_file` (RELAY_REDIS_CERT_FILE): `redis_key_file` needs its certificate",
                ));
            }
        };
        Ok(
            (ca.is_some() || client.is_some())
                .then_some(crate::redis_link::RedisTls { ca, client }),
        )
    }

    /// The Redis URL, or an error naming `RELAY_REDIS_URL` when it is not set.
    ///
    /// # Errors
    /// When `redis_url` is not configured.
    pub fn redis_url(&self) -> Result<&SecretString, ConfigError> {
        self.settings.redis_url.as_ref().ok_or_else(|| {
            ConfigError::new(format!(
                "missing value for `redis_url` (RELAY_REDIS_URL): relay-{} needs a Redis URL",
                self.service
            ))
        })
    }
}

/// Builds a [`Config`] layer by layer; later layers win.
#[derive(Debug)]
pub struct ConfigBuilder {
    service: &'static str,
    figment: Figment,
    /// Whether a file or the environment was added: an operator's configuration.
    operator: bool,
}

impl ConfigBuilder {
    /// Adds a TOML file, which must exist.
    ///
    /// # Errors
    /// When the file does not exist.
    pub fn file(mut self, path: &Path) -> Result<Self, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError::new(format!(
                "configuration file {} does not exist",
                path.display()
            )));
        }
        self.figment = self.figment.merge(Toml::file_exact(path));
        self.operator = true;
        Ok(self)
    }

    /// Adds the `RELAY_*` environment variables (`__` separates nested keys).
    #[must_use]
    pub fn env(mut self) -> Self {
        let service = self.service;
        self.figment = self
            .figment
            // The old names of `[database]` keys (DATABASE_ENV_ALIASES), first, so that the
            // new names, merged next, win.
            .merge(Env::prefixed("RELAY_").split("__").filter_map(move |key| {
                DATABASE_ENV_ALIASES
                    .iter()
                    .find(|(owner, old, _)| *owner == service && key == *old)
                    .map(|(_, _, new)| (*new).into())
            }))
            .merge(
                Env::prefixed("RELAY_")
                    .split("__")
                    .ignore(&["config"])
                    .filter(|key| !DATABASE_ENV_ALIASES.iter().any(|(_, old, _)| key == *old)),
            )
            // The operator's names of DESIGN.md (`RELAY_TLS_CERT`) for keys of `[security]`.
            .merge(Env::prefixed("RELAY_").filter_map(|key| {
                crate::security::ENV_ALIASES
                    .iter()
                    .find(|(alias, _)| key == *alias)
                    .map(|(_, target)| (*target).into())
            }));
        self.operator = true;
        self
    }

    /// Sets one key, as a test or an embedding program would (`"server.request_timeout_ms"`).
    #[must_use]
    pub fn set(mut self, key: &str, value: impl serde::Serialize) -> Self {
        self.figment = self.figment.merge(Serialized::default(key, value));
        self
    }

    /// Checks and returns the configuration.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first invalid key and where it came from.
    pub fn build(self) -> Result<Config, ConfigError> {
        let settings: Settings = self.figment.extract().map_err(ConfigError::from_figment)?;
        settings.server.validate()?;
        settings.clock.validate()?;
        settings.database.validate()?;
        settings.audit.validate(settings.insecure_dev)?;
        Ok(Config {
            service: self.service,
            settings,
            figment: self.figment,
            operator: self.operator,
        })
    }
}

#[cfg(test)]
mod tests;
