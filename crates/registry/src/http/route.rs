//! Which request is which: method and path → [`Route`]. Pure.

use ::http::Method;

/// One operation of the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/instances`
    Register,
    /// `PUT /v1/leases/{lease}/heartbeat`
    Heartbeat { lease: i64 },
    /// `DELETE /v1/instances/{service}/{id}`
    Deregister { service: String, id: String },
    /// `GET /v1/services/{service}`
    Instances { service: String },
    /// `GET /v1/services/{service}/watch`, or `GET /v1/watch` (every service).
    Watch { service: Option<String> },
    /// `GET /metrics`
    Metrics,
}

/// Builds a route once its method matched; fails on a bad segment.
type Build<'a> = Box<dyn FnOnce() -> Result<Route, String> + 'a>;

/// Why a request matches no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No route has this path (404).
    NotFound,
    /// The path exists, not with this method (405); `allow` is the one it has.
    MethodNotAllowed { allow: Method, template: &'static str },
    /// The path's shape matches but a segment is not valid (400).
    BadSegment { template: &'static str, message: String },
}

/// Every route, for error messages.
pub const ROUTES: &str = "POST /v1/instances, PUT /v1/leases/{lease}/heartbeat, \
    DELETE /v1/instances/{service}/{id}, GET /v1/services/{service}, \
    GET /v1/services/{service}/watch, GET /v1/watch, GET /metrics";

impl Route {
    /// The route's template, for metrics labels: a bounded set of values.
    pub fn template(&self) -> &'static str {
        match self {
            Route::Register => "/v1/instances",
            Route::Heartbeat { .. } => "/v1/leases/{lease}/heartbeat",
            Route::Deregister { .. } => "/v1/instances/{service}/{id}",
            Route::Instances { .. } => "/v1/services/{service}",
            Route::Watch { service: Some(_) } => "/v1/services/{service}/watch",
            Route::Watch { service: None } => "/v1/watch",
            Route::Metrics => "/metrics",
        }
    }

    /// Parses `method` and `path` (without the query).
    pub fn parse(method: &Method, path: &str) -> Result<Route, RouteError> {
        let Some(rest) = path.strip_prefix('/') else { return Err(RouteError::NotFound) };
        let segments: Vec<&str> = rest.split('/').collect();
        // (the method the shape takes, its template, how to build it)
        let (allow, template, build): (Method, &'static str, Build<'_>) = match segments.as_slice() {
            ["v1", "instances"] => (Method::POST, "/v1/instances", Box::new(|| Ok(Route::Register))),
            ["v1", "instances", service, id] => (
                Method::DELETE,
                "/v1/instances/{service}/{id}",
                Box::new(|| {
                    name("service", service)?;
                    name("instance id", id)?;
                    Ok(Route::Deregister { service: service.to_string(), id: id.to_string() })
                }),
            ),
            ["v1", "leases", lease, "heartbeat"] => (
                Method::PUT,
                "/v1/leases/{lease}/heartbeat",
                Box::new(|| Ok(Route::Heartbeat { lease: parse_lease(lease)? })),
            ),
            ["v1", "services", service] => (
                Method::GET,
                "/v1/services/{service}",
                Box::new(|| {
                    name("service", service)?;
                    Ok(Route::Instances { service: service.to_string() })
                }),
            ),
            ["v1", "services", service, "watch"] => (
                Method::GET,
                "/v1/services/{service}/watch",
                Box::new(|| {
                    name("service", service)?;
                    Ok(Route::Watch { service: Some(service.to_string()) })
                }),
            ),
            ["v1", "watch"] => (Method::GET, "/v1/watch", Box::new(|| Ok(Route::Watch { service: None }))),
            ["metrics"] => (Method::GET, "/metrics", Box::new(|| Ok(Route::Metrics))),
            _ => return Err(RouteError::NotFound),
        };
        if *method != allow {
            return Err(RouteError::MethodNotAllowed { allow, template });
        }
        build().map_err(|message| RouteError::BadSegment { template, message })
    }
}

fn name(what: &'static str, value: &str) -> Result<(), String> {
    topology::validate_name(what, value).map_err(|e| e.to_string())
}

/// A lease id in a path: the decimal number the registration answered.
pub fn parse_lease(text: &str) -> Result<i64, String> {
    match text.parse::<i64>() {
        Ok(lease) if lease > 0 => Ok(lease),
        _ => Err(format!(
            "lease {text:?} is not a lease id: use the decimal \"lease\" that POST /v1/instances answered"
        )),
    }
}

/// The value of `name` in a query string (`a=1&b=2`), if present. Values are
/// numbers here, so no percent-decoding is needed.
pub fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(method: Method, path: &str) -> Result<Route, RouteError> {
        Route::parse(&method, path)
    }

    #[test]
    fn every_route_parses() {
        assert_eq!(parse(Method::POST, "/v1/instances"), Ok(Route::Register));
        assert_eq!(
            parse(Method::PUT, "/v1/leases/7587869913443542273/heartbeat"),
            Ok(Route::Heartbeat { lease: 7587869913443542273 })
        );
        assert_eq!(
            parse(Method::DELETE, "/v1/instances/account/hz-a-1"),
            Ok(Route::Deregister { service: "account".into(), id: "hz-a-1".into() })
        );
        assert_eq!(
            parse(Method::GET, "/v1/services/account"),
            Ok(Route::Instances { service: "account".into() })
        );
        assert_eq!(
            parse(Method::GET, "/v1/services/account/watch"),
            Ok(Route::Watch { service: Some("account".into()) })
        );
        assert_eq!(parse(Method::GET, "/v1/watch"), Ok(Route::Watch { service: None }));
        assert_eq!(parse(Method::GET, "/metrics"), Ok(Route::Metrics));
    }

    #[test]
    fn templates_are_a_bounded_set() {
        let route = parse(Method::DELETE, "/v1/instances/a/b").unwrap();
        assert_eq!(route.template(), "/v1/instances/{service}/{id}");
        let route = parse(Method::GET, "/v1/services/account/watch").unwrap();
        assert_eq!(route.template(), "/v1/services/{service}/watch");
        for template in
            [Route::Register.template(), Route::Heartbeat { lease: 1 }.template(), Route::Metrics.template()]
        {
            assert!(ROUTES.contains(template), "{template} is listed");
        }
    }

    #[test]
    fn unknown_paths_are_not_found() {
        for path in [
            "",
            "/",
            "/v1",
            "/v1/",
            "/v1/instances/",
            "/v1/instances/a/b/c",
            "/v1/services",
            "/v1/services/a/",
            "/v1/services/a/watch/x",
            "/v1/leases/1",
            "/v2/watch",
            "/metrics/",
            "v1/watch",
        ] {
            assert_eq!(parse(Method::GET, path), Err(RouteError::NotFound), "{path:?}");
        }
    }

    #[test]
    fn wrong_methods_name_the_right_one() {
        assert_eq!(
            parse(Method::GET, "/v1/instances"),
            Err(RouteError::MethodNotAllowed { allow: Method::POST, template: "/v1/instances" })
        );
        assert_eq!(
            parse(Method::POST, "/v1/leases/5/heartbeat"),
            Err(RouteError::MethodNotAllowed {
                allow: Method::PUT,
                template: "/v1/leases/{lease}/heartbeat"
            })
        );
        assert!(matches!(
            parse(Method::GET, "/v1/instances/a/b"),
            Err(RouteError::MethodNotAllowed { allow: Method::DELETE, .. })
        ));
        // The method is checked before the segments.
        assert!(matches!(
            parse(Method::POST, "/v1/services/BAD"),
            Err(RouteError::MethodNotAllowed { allow: Method::GET, .. })
        ));
    }

    #[test]
    fn bad_segments_say_what_to_fix() {
        for (method, path, expected) in [
            (Method::PUT, "/v1/leases/abc/heartbeat", "decimal"),
            (Method::PUT, "/v1/leases/-5/heartbeat", "decimal"),
            (Method::PUT, "/v1/leases/0/heartbeat", "decimal"),
            (Method::PUT, "/v1/leases/99999999999999999999/heartbeat", "decimal"),
            (Method::GET, "/v1/services/Account", "service name"),
            (Method::GET, "/v1/services/a%2Fb/watch", "service name"),
            (Method::DELETE, "/v1/instances/account/", "instance id name is empty"),
            (Method::DELETE, "/v1/instances/account/ID!", "instance id name"),
        ] {
            match parse(method, path) {
                Err(RouteError::BadSegment { message, .. }) => {
                    assert!(message.contains(expected), "{path}: {message} should mention {expected}")
                }
                other => panic!("{path}: expected a bad segment, got {other:?}"),
            }
        }
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param(Some("min_revision=12"), "min_revision"), Some("12"));
        assert_eq!(query_param(Some("a=1&min_revision=7&b"), "min_revision"), Some("7"));
        assert_eq!(query_param(Some("a=1&b"), "b"), Some(""));
        assert_eq!(query_param(Some("min_revisionx=1"), "min_revision"), None);
        assert_eq!(query_param(None, "min_revision"), None);
    }
}
