//! From a request's path, query and headers to the instance that must serve it,
//! against one [`View`]. Pure: no IO, so every rule is unit-tested.

use http::{HeaderMap, StatusCode};
use registry::Instance;
use topology::UnitKind;

use crate::routes::UidSource;
use crate::state::View;

/// Where a request goes; borrowed from the [`View`] it was resolved against
/// (no allocation on the hot path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    pub route: &'a str,
    pub unit: &'a str,
    pub dc: &'a str,
    pub epoch: u64,
    pub uid: Option<u64>,
    pub shard: Option<u32>,
    pub instance: &'a str,
    pub address: &'a str,
}

/// Why a request is not forwarded: the status and a body that says what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
    pub route: Option<String>,
    pub unit: Option<String>,
}

fn refuse(status: StatusCode, route: Option<&str>, unit: Option<&str>, message: String) -> Refusal {
    Refusal { status, message, route: route.map(str::to_string), unit: unit.map(str::to_string) }
}

/// The raw user id of a request, if its source has one.
fn uid_text<'a>(
    source: &UidSource,
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
) -> Option<&'a str> {
    match source {
        UidSource::Header(name) => headers.get(name.as_str())?.to_str().ok().map(str::trim),
        UidSource::Cookie(name) => headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                (key == name).then_some(value.trim())
            }),
        UidSource::PathSegment(n) => path.split('/').filter(|s| !s.is_empty()).nth(*n),
        UidSource::Query(name) => query?.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            (key == name).then_some(value)
        }),
    }
}

/// Whether `path` is under `prefix` at a segment boundary: `/pay` matches
/// `/pay` and `/pay/x`, not `/payments`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'),
        None => false,
    }
}

/// Resolves a request against `view` for a gateway in `city`; `pick` spreads
/// requests over a unit's instances (any counter will do).
pub fn resolve<'a>(
    view: &'a View,
    city: &str,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    pick: u64,
) -> Result<Target<'a>, Refusal> {
    let route = view.routes.iter().find(|r| prefix_matches(&r.path_prefix, path)).ok_or_else(|| {
        refuse(StatusCode::NOT_FOUND, None, None, format!("no route matches path {path:?}"))
    })?;
    let name = Some(route.name.as_str());
    let table = view.table.as_ref().ok_or_else(|| {
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            name,
            None,
            "no unit topology is published; publish one with `fivefold topology apply`".to_string(),
        )
    })?;
    let (unit, uid, shard) = match route.zone {
        UnitKind::Rzone => {
            let source = route.uid.as_ref().expect("validated: rzone routes name a uid source");
            let text = uid_text(source, path, query, headers).filter(|t| !t.is_empty()).ok_or_else(|| {
                refuse(
                    StatusCode::BAD_REQUEST,
                    name,
                    None,
                    format!("route {:?} needs a user id in {source}", route.name),
                )
            })?;
            let uid: u64 = text.parse().map_err(|_| {
                refuse(
                    StatusCode::BAD_REQUEST,
                    name,
                    None,
                    format!("user id {text:?} in {source} is not a number (0..=18446744073709551615)"),
                )
            })?;
            let shard = table.shard_of(uid);
            (table.unit_for_uid(uid).name.as_str(), Some(uid), Some(shard))
        }
        UnitKind::Gzone => (table.gzone().name.as_str(), None, None),
        UnitKind::Czone => {
            let unit = table.czone_in_city(city).ok_or_else(|| {
                refuse(StatusCode::SERVICE_UNAVAILABLE, name, None, format!("no czone serves city {city:?}"))
            })?;
            (unit.name.as_str(), None, None)
        }
    };
    let record = view.units.get(unit).ok_or_else(|| {
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            name,
            Some(unit),
            format!("unit {unit} has no routing record; re-apply the topology"),
        )
    })?;
    let registered: &[Instance] =
        view.instances.get(&route.service).and_then(|units| units.get(unit)).map_or(&[], Vec::as_slice);
    let candidates = || registered.iter().filter(|i| i.dc == record.current_dc);
    let total: u64 = candidates().map(|i| u64::from(i.weight)).sum();
    if total == 0 {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            name,
            Some(unit),
            format!(
                "no instance of service {} is up for unit {unit} in dc {} (epoch {})",
                route.service, record.current_dc, record.epoch
            ),
        ));
    }
    let mut point = pick % total;
    let chosen = candidates()
        .find(|i| {
            let weight = u64::from(i.weight);
            if point < weight {
                return true;
            }
            point -= weight;
            false
        })
        .expect("point < total weight");
    Ok(Target {
        route: &route.name,
        unit,
        dc: &record.current_dc,
        epoch: record.epoch,
        uid,
        shard,
        instance: &chosen.id,
        address: &chosen.address,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use http::HeaderValue;
    use registry::Health;
    use topology::{RoutingTable, UnitTopology};

    use super::*;
    use crate::routes::Route;

    fn instance(unit: &str, dc: &str, n: u32) -> Instance {
        Instance {
            service: "account".into(),
            id: format!("{unit}-{dc}-{n}"),
            address: format!("127.0.0.1:{}", 10_000 + n),
            unit: unit.into(),
            dc: dc.into(),
            city: "x".into(),
            version: String::new(),
            weight: 100,
            metadata: BTreeMap::new(),
            health: Health::Up,
        }
    }

    fn view() -> View {
        let table = RoutingTable::new(UnitTopology::default_deployment()).unwrap();
        let mut units = HashMap::new();
        let mut instances: HashMap<String, HashMap<String, Vec<Instance>>> = HashMap::new();
        for spec in &table.topology().units {
            units.insert(spec.name.clone(), router::UnitRouting::at_home(spec));
            let mut list =
                vec![instance(&spec.name, &spec.home_dc, 1), instance(&spec.name, &spec.home_dc, 2)];
            if let Some(standby) = &spec.standby_dc {
                list.push(instance(&spec.name, standby, 3));
            }
            instances.entry("account".into()).or_default().insert(spec.name.clone(), list);
        }
        let route = |name: &str, prefix: &str, zone: UnitKind, uid: Option<UidSource>| Route {
            name: name.into(),
            path_prefix: prefix.into(),
            service: "account".into(),
            zone,
            uid,
        };
        let mut routes = vec![
            route("path", "/accounts", UnitKind::Rzone, Some(UidSource::PathSegment(1))),
            route("header", "/pay", UnitKind::Rzone, Some(UidSource::Header("x-uid".into()))),
            route("cookie", "/c", UnitKind::Rzone, Some(UidSource::Cookie("uid".into()))),
            route("query", "/q", UnitKind::Rzone, Some(UidSource::Query("uid".into()))),
            route("global", "/config", UnitKind::Gzone, None),
            route("local", "/rates", UnitKind::Czone, None),
        ];
        routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        View { revision: 1, table: Some(table), units, routes, instances }
    }

    fn go<'a>(
        view: &'a View,
        path: &str,
        query: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Target<'a>, Refusal> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        resolve(view, "shanghai", path, query, &map, 0)
    }

    #[test]
    fn every_uid_source_routes_to_the_owning_unit_at_its_current_dc() {
        let view = view();
        let t = go(&view, "/accounts/1234/balance", None, &[]).unwrap();
        assert_eq!((t.unit, t.dc, t.shard, t.uid, t.epoch), ("rz-hz-b", "hz-b", Some(34), Some(1234), 1));
        assert_eq!(go(&view, "/pay", None, &[("x-uid", "7")]).unwrap().unit, "rz-hz-a");
        assert_eq!(go(&view, "/c", None, &[("cookie", "a=1; uid=99")]).unwrap().unit, "rz-sh-b");
        assert_eq!(go(&view, "/q", Some("x=1&uid=60"), &[]).unwrap().unit, "rz-sh-a");
        assert_eq!(go(&view, "/config/x", None, &[]).unwrap().unit, "gz");
        let local = go(&view, "/rates", None, &[]).unwrap();
        assert_eq!((local.unit, local.dc), ("cz-shanghai", "sh-a"));
    }

    #[test]
    fn a_moved_unit_is_served_from_its_new_dc_only() {
        let mut view = view();
        let moved = view.units["rz-hz-b"].moved_to("sh-b");
        view.units.insert("rz-hz-b".into(), moved);
        for pick in 0..10 {
            let mut headers = HeaderMap::new();
            headers.insert("x-uid", HeaderValue::from_static("1234"));
            let t = resolve(&view, "hangzhou", "/pay", None, &headers, pick).unwrap();
            assert_eq!((t.dc, t.epoch), ("sh-b", 2));
            assert!(t.instance.contains("sh-b"), "{t:?}");
        }
    }

    #[test]
    fn instances_share_by_weight() {
        let mut view = view();
        let list = view.instances.get_mut("account").unwrap().get_mut("rz-hz-a").unwrap();
        list[0].weight = 300;
        let mut counts: HashMap<String, u32> = HashMap::new();
        for pick in 0..400 {
            let mut headers = HeaderMap::new();
            headers.insert("x-uid", HeaderValue::from_static("5"));
            let t = resolve(&view, "hangzhou", "/pay", None, &headers, pick).unwrap();
            *counts.entry(t.instance.to_string()).or_default() += 1;
        }
        assert_eq!(counts["rz-hz-a-hz-a-1"], 300);
        assert_eq!(counts["rz-hz-a-hz-a-2"], 100);
    }

    #[test]
    fn bad_requests_are_refused_with_what_to_fix() {
        let view = view();
        let r = go(&view, "/pay", None, &[]).unwrap_err();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.message.contains("needs a user id in header \"x-uid\""), "{}", r.message);
        let r = go(&view, "/pay", None, &[("x-uid", "abc")]).unwrap_err();
        assert!(
            r.status == StatusCode::BAD_REQUEST
                && r.message.contains("\"abc\"")
                && r.message.contains("not a number")
        );
        let r = go(&view, "/accounts/-5", None, &[]).unwrap_err();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let r = go(&view, "/nowhere", None, &[]).unwrap_err();
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        // Prefixes match whole segments: /pay is not /payments.
        let r = go(&view, "/payments", None, &[("x-uid", "1")]).unwrap_err();
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(go(&view, "/pay/now", None, &[("x-uid", "1")]).unwrap().route, "header");
        let mut empty = view;
        empty.instances.clear();
        let r = go(&empty, "/pay", None, &[("x-uid", "1")]).unwrap_err();
        assert!(
            r.status == StatusCode::SERVICE_UNAVAILABLE
                && r.message.contains("no instance of service account")
        );
        let none = View { routes: empty.routes.clone(), ..View::default() };
        let r = go(&none, "/pay", None, &[("x-uid", "1")]).unwrap_err();
        assert!(r.message.contains("fivefold topology apply"), "{}", r.message);
    }
}
