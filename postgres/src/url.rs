//! `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`: parsed once, printed without the password.

use crate::Error;
use std::fmt;

/// Where the shared state lives. `Display` and `Debug` print `postgres://USER@HOST:PORT/DB`,
/// never the password.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    user: String,
    password: Option<String>,
    host: String,
    port: u16,
    database: String,
}

fn decode(part: &str, what: &str) -> Result<String, Error> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = part.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(b) = hex else {
                return Err(Error::Url(format!("the {what} has a % not followed by two hex digits")));
            };
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::Url(format!("the {what} is not UTF-8 once decoded")))
}

impl PgUrl {
    /// Parses a URL. The user, host and database are required; the port defaults to 5432;
    /// `%XX` escapes are decoded in the user, password and database. The only query parameter
    /// is `sslmode=disable` (meter does not speak TLS to Postgres yet).
    pub fn parse(text: &str) -> Result<Self, Error> {
        let rest = text
            .strip_prefix("postgres://")
            .or_else(|| text.strip_prefix("postgresql://"))
            .ok_or_else(|| Error::Url("must start with postgres:// (postgres://USER:PASSWORD@HOST:PORT/DB)".into()))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        for param in query.split('&').filter(|p| !p.is_empty()) {
            match param.split_once('=') {
                Some(("sslmode", "disable")) => {}
                Some(("sslmode", mode)) => {
                    return Err(Error::Url(format!(
                        "sslmode={mode} is not supported: meter connects without TLS (use sslmode=disable, a \
                         private network or a TLS proxy)"
                    )));
                }
                _ => {
                    let name = param.split('=').next().unwrap_or(param);
                    return Err(Error::Url(format!("unknown parameter {name:?}: the only one is sslmode=disable")));
                }
            }
        }
        let (auth, rest) = rest
            .rsplit_once('@')
            .ok_or_else(|| Error::Url("a user is required (postgres://USER:PASSWORD@HOST:PORT/DB)".into()))?;
        let (user, password) = match auth.split_once(':') {
            Some((u, p)) => (decode(u, "user")?, Some(decode(p, "password")?)),
            None => (decode(auth, "user")?, None),
        };
        if user.is_empty() {
            return Err(Error::Url("the user is empty".into()));
        }
        let (hostport, database) = rest
            .split_once('/')
            .ok_or_else(|| Error::Url("a database is required (postgres://USER@HOST:PORT/DB)".into()))?;
        let database = decode(database, "database")?;
        if database.is_empty() {
            return Err(Error::Url("the database is empty".into()));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => {
                let port = p.parse::<u16>().ok().filter(|p| *p > 0);
                (h, port.ok_or_else(|| Error::Url(format!("port {p:?} is not a number from 1 to 65535")))?)
            }
            None => (hostport, 5432),
        };
        if host.is_empty() {
            return Err(Error::Url("the host is empty".into()));
        }
        Ok(Self { user, password, host: host.to_string(), port, database })
    }

    /// The same server and credentials, another database.
    pub fn with_database(&self, database: &str) -> Self {
        Self { database: database.to_string(), ..self.clone() }
    }

    /// The whole URL, password included, for handing to a process of meter under test.
    #[cfg(feature = "testing")]
    pub fn with_password_text(&self) -> String {
        let password = self.password.as_deref().map(|p| format!(":{p}")).unwrap_or_default();
        format!("postgres://{}{password}@{}:{}/{}", self.user, self.host, self.port, self.database)
    }

    /// The database's name.
    pub fn database(&self) -> &str {
        &self.database
    }

    pub(crate) fn config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.user(&self.user).host(&self.host).port(self.port).dbname(&self.database);
        if let Some(p) = &self.password {
            c.password(p);
        }
        // The pool hands out the connection given back last, so the others may sit idle for
        // hours: a connection a NAT or a firewall dropped in silence is found dead within about
        // a minute and a half of idling (probes from 60 s, every 10 s, 3 unanswered), and one
        // whose sent data goes unacknowledged for 30 s is closed, rather than hang the first
        // burst of work that takes it until TCP gives up.
        c.keepalives(true)
            .keepalives_idle(std::time::Duration::from_secs(60))
            .keepalives_interval(std::time::Duration::from_secs(10))
            .keepalives_retries(3)
            .tcp_user_timeout(std::time::Duration::from_secs(30));
        c
    }
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgres://{}@{}:{}/{}", self.user, self.host, self.port, self.database)
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_probe_a_silent_peer() {
        let c = PgUrl::parse("postgres://meter:pw@db:5432/meter").unwrap().config();
        assert!(c.get_keepalives());
        assert_eq!(c.get_keepalives_idle(), std::time::Duration::from_secs(60));
        assert_eq!(c.get_keepalives_interval(), Some(std::time::Duration::from_secs(10)));
        assert_eq!(c.get_keepalives_retries(), Some(3));
        assert_eq!(c.get_tcp_user_timeout(), Some(&std::time::Duration::from_secs(30)));
    }

    #[test]
    fn parses_and_never_prints_the_password() {
        let u = PgUrl::parse("postgres://meter:s3cr%40t@db.example:6543/usage?sslmode=disable").unwrap();
        assert_eq!(u.to_string(), "postgres://meter@db.example:6543/usage");
        assert_eq!(format!("{u:?}"), "postgres://meter@db.example:6543/usage");
        assert_eq!(u.password.as_deref(), Some("s3cr@t"));
        let d = PgUrl::parse("postgresql://m@h/d").unwrap();
        assert_eq!(d.to_string(), "postgres://m@h:5432/d");
        assert_eq!(u.with_database("other").to_string(), "postgres://meter@db.example:6543/other");
    }

    #[test]
    fn refuses_what_it_cannot_use_naming_the_part() {
        for (text, says) in [
            ("mysql://u@h/d", "postgres://"),
            ("postgres://h:5432/d", "user"),
            ("postgres://u:pw@h:5432", "database"),
            ("postgres://u:pw@h:5432/", "database is empty"),
            ("postgres://u:pw@h:port/d", "port"),
            ("postgres://u:pw@h:0/d", "port"),
            ("postgres://u:pw@:5432/d", "host"),
            ("postgres://u:p%zz@h/d", "password"),
            ("postgres://u:pw@h/d?sslmode=require", "sslmode=require"),
            ("postgres://u:pw@h/d?pool=3", "unknown parameter \"pool\""),
        ] {
            let e = PgUrl::parse(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
            assert!(!e.contains("pw"), "{text}: the password never prints: {e}");
        }
    }
}
