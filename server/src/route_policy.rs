//! What a proxy route requires of a session: `/verify?role=admin&plan=pro`, or the
//! same names in an Envoy route's `context_extensions`. Each name may be repeated
//! (any of its values will do); different names are all required.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::http::{header, HeaderValue, Response, StatusCode};
use composio_auth::{ComposioAuthLayer, SessionInfo};

/// The names a policy knows.
pub const NAMES: [&str; 4] = ["role", "org", "project", "plan"];

/// Distinct policies kept ready; a proxy's configuration writes a handful.
const KEPT: usize = 256;

/// A route's requirements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutePolicy {
    /// `org_member.role` is one of these.
    roles: Vec<String>,
    /// `project.org.id` is one of these.
    orgs: Vec<String>,
    /// `project.id` is one of these.
    projects: Vec<String>,
    /// `project.org.plan` is one of these.
    plans: Vec<String>,
}

impl RoutePolicy {
    /// The policy of a `/verify` query string.
    ///
    /// # Errors
    ///
    /// A name that is not one of [`NAMES`]: a proxy configuration error, never
    /// an open door.
    pub fn from_query(query: &str) -> Result<Self, String> {
        Self::from_pairs(
            form_urlencoded::parse(query.as_bytes()).map(|(n, v)| (n.into_owned(), v.into_owned())),
        )
    }

    /// The policy of an Envoy route's `context_extensions` (gRPC `Check`), the same
    /// names, each value a comma-separated list.
    ///
    /// # Errors
    ///
    /// As [`from_query`](Self::from_query).
    pub fn from_context(extensions: &HashMap<String, String>) -> Result<Self, String> {
        Self::from_pairs(extensions.iter().flat_map(|(name, values)| {
            values
                .split(',')
                .map(|value| (name.clone(), value.trim().to_owned()))
                .collect::<Vec<_>>()
        }))
    }

    fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Result<Self, String> {
        let mut policy = Self::default();
        for (name, value) in pairs {
            let values = match name.as_str() {
                "role" => &mut policy.roles,
                "org" => &mut policy.orgs,
                "project" => &mut policy.projects,
                "plan" => &mut policy.plans,
                other => {
                    return Err(format!(
                        "unknown policy parameter {other:?} (known: {})",
                        NAMES.join(", ")
                    ))
                }
            };
            values.push(value);
        }
        Ok(policy)
    }

    /// Whether the policy requires nothing beyond a valid key.
    pub fn is_open(&self) -> bool {
        self == &Self::default()
    }

    /// Whether `session` meets every requirement.
    pub fn admits(&self, session: &SessionInfo) -> bool {
        let any = |values: &[String], value: Option<&str>| {
            values.is_empty() || value.is_some_and(|v| values.iter().any(|w| w == v))
        };
        let project = session.project.as_ref();
        any(&self.roles, Some(&session.org_member.role))
            && any(&self.orgs, project.map(|p| p.org.id.as_str()))
            && any(&self.projects, project.map(|p| p.id.as_str()))
            && any(&self.plans, project.map(|p| p.org.plan.as_str()))
    }
}

/// The answer for a route whose policy is wrong (`route` says where it is
/// written): logged, and a 500 that says why; never an allow.
pub fn misconfigured(error: &str, route: &str) -> Response<String> {
    tracing::error!(target: "composio_auth_server", %error, "{route} is wrong; refusing every request on it");
    let mut response = Response::new(format!("composio-auth-server: {error}\n"));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// One layer per distinct policy, all made by `require` from one base layer: one
/// cache, one upstream budget for every route.
pub struct Policies {
    base: ComposioAuthLayer,
    by_query: RwLock<HashMap<String, ComposioAuthLayer>>,
}

impl Policies {
    /// Policies over `base`.
    pub fn new(base: ComposioAuthLayer) -> Self {
        Self {
            base,
            by_query: RwLock::new(HashMap::new()),
        }
    }

    /// The layer with no requirement beyond a valid key.
    pub fn base(&self) -> &ComposioAuthLayer {
        &self.base
    }

    /// The layer for a `/verify` query string.
    ///
    /// # Errors
    ///
    /// As [`RoutePolicy::from_query`].
    pub fn for_query(&self, query: &str) -> Result<ComposioAuthLayer, String> {
        if query.is_empty() {
            return Ok(self.base.clone());
        }
        if let Some(layer) = self.read().get(query) {
            return Ok(layer.clone());
        }
        let layer = self.for_policy(RoutePolicy::from_query(query)?);
        let mut by_query = self.by_query.write().unwrap_or_else(|e| e.into_inner());
        if by_query.len() < KEPT {
            by_query.insert(query.to_owned(), layer.clone());
        }
        Ok(layer)
    }

    /// The layer for `policy`.
    pub fn for_policy(&self, policy: RoutePolicy) -> ComposioAuthLayer {
        if policy.is_open() {
            return self.base.clone();
        }
        let policy = Arc::new(policy);
        self.base.require(move |session| policy.admits(session))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, ComposioAuthLayer>> {
        self.by_query.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use composio_auth::SessionDocument;

    fn session(role: &str) -> SessionInfo {
        let mut document: serde_json::Value =
            composio_auth::testing::StandIn::document_for("a@example.com", "A", role);
        document["project"]["org"]["plan"] = "pro".into();
        let document: SessionDocument = serde_json::from_value(document).unwrap();
        SessionInfo::new(document)
    }

    #[test]
    fn repeated_names_are_alternatives_and_different_names_all_count() {
        let admin = session("admin");
        let member = session("member");
        let policy = RoutePolicy::from_query("role=admin&role=owner").unwrap();
        assert!(policy.admits(&admin) && !policy.admits(&member));
        let policy = RoutePolicy::from_query("role=member&plan=pro").unwrap();
        assert!(policy.admits(&member));
        let policy = RoutePolicy::from_query("role=member&plan=free").unwrap();
        assert!(!policy.admits(&member));
        assert!(RoutePolicy::from_query("").unwrap().is_open());
    }

    #[test]
    fn an_unknown_name_is_an_error_not_an_open_door() {
        let error = RoutePolicy::from_query("role=admin&rol=admin").unwrap_err();
        assert!(error.contains("\"rol\""), "{error}");
    }

    #[test]
    fn context_extensions_split_on_commas() {
        let extensions = HashMap::from([("role".to_owned(), "admin, owner".to_owned())]);
        let policy = RoutePolicy::from_context(&extensions).unwrap();
        assert_eq!(policy.roles, ["admin", "owner"]);
        let extensions = HashMap::from([("tier".to_owned(), "gold".to_owned())]);
        assert!(RoutePolicy::from_context(&extensions).is_err());
    }
}
