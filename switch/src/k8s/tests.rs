//! The JSON → services translation, on recorded `kubectl get services,endpointslices -A -o
//! json` output (switch/tests/fixtures/k8s/) and on small hand-made lists.

use super::translate::Translated;
use super::*;
use pipeline::gateway::ServiceConfig;
use std::net::SocketAddrV4;

const V1: &str = include_str!("../../tests/fixtures/k8s/cluster-v1.json");
const V2: &str = include_str!("../../tests/fixtures/k8s/cluster-v2.json");

fn node() -> Node {
    Node {
        pod_cidr: "10.244.1.1/24".parse().unwrap(),
        uplink: Some("198.18.0.1/24".parse().unwrap()),
    }
}

fn import(text: &str) -> Translated {
    translate(&parse(text.as_bytes()).unwrap(), &node(), Invalid::Refuse).unwrap()
}

fn error(text: &str) -> String {
    match parse(text.as_bytes()) {
        Err(e) => e,
        Ok(list) => translate(&list, &node(), Invalid::Refuse).unwrap_err(),
    }
}

fn find<'a>(t: &'a Translated, name: &str) -> &'a ServiceConfig {
    t.services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name}: {:?}", names(t)))
}

fn names(t: &Translated) -> Vec<&str> {
    t.services.iter().map(|s| s.name.as_str()).collect()
}

fn addrs(list: &[&str]) -> Vec<SocketAddrV4> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

#[test]
fn the_recorded_cluster_translates_as_kube_proxy_would_program_it() {
    let t = import(V1);
    assert_eq!(
        names(&t),
        [
            "default/draining:80",
            "default/empty:80",
            "default/local:web",
            "default/local:whoami",
            "default/sticky-default:80",
            "default/sticky:80",
            "default/web:http",
            "default/web:metrics",
            "kube-system/kube-dns:dns",
            "kube-system/kube-dns:dns-tcp",
        ]
    );
    // Ports matched by name across two slices (listed in different orders); the terminating
    // endpoint is not used while others are ready; the IPv6 slice and the unlabelled slice
    // are ignored.
    let web = find(&t, "default/web:http");
    assert_eq!(web.cluster_ip.to_string(), "10.96.0.10");
    assert_eq!((web.port, web.proto, web.node_port), (80, 6, Some(30080)));
    assert_eq!(
        web.backends,
        addrs(&["10.244.1.2:8080", "10.244.1.3:8080", "10.244.2.5:8080"])
    );
    assert_eq!(web.affinity_timeout_s, None);
    assert_eq!(web.external_local, None);
    let metrics = find(&t, "default/web:metrics");
    assert_eq!((metrics.port, metrics.node_port), (9090, Some(30090)));
    assert_eq!(metrics.backends.len(), 3);
    assert!(metrics.backends.iter().all(|b| b.port() == 9090));
    // ClientIP affinity, with its timeout and with the default one.
    assert_eq!(find(&t, "default/sticky:80").affinity_timeout_s, Some(60));
    assert_eq!(
        find(&t, "default/sticky-default:80").affinity_timeout_s,
        Some(10_800)
    );
    assert_eq!(find(&t, "default/sticky:80").backends.len(), 3);
    // ETP Local: the NodePort reaches this node's ready endpoint only; the cluster IP all.
    let local = find(&t, "default/local:web");
    assert_eq!(
        local.backends,
        addrs(&["10.244.1.2:8080", "10.244.2.5:8080"])
    );
    assert_eq!(
        local.external_local.as_deref(),
        Some(&addrs(&["10.244.1.2:8080"])[..])
    );
    assert_eq!(find(&t, "default/local:whoami").node_port, Some(30082));
    // No endpoint ready: the serving terminating one is used, not the non-serving one.
    assert_eq!(
        find(&t, "default/draining:80").backends,
        addrs(&["10.244.1.3:8080"])
    );
    assert!(find(&t, "default/empty:80").backends.is_empty());
    // Protocols per port; SCTP, headless and ExternalName are skipped and said so.
    let dns = find(&t, "kube-system/kube-dns:dns");
    assert_eq!((dns.proto, dns.port), (17, 53));
    assert_eq!(dns.backends, addrs(&["10.244.1.4:53"]));
    assert_eq!(find(&t, "kube-system/kube-dns:dns-tcp").proto, 6);
    let skipped = t.skipped.join("; ");
    for what in [
        "kube-dns: port 9999 SCTP",
        "default/db: headless",
        "default/elsewhere: ExternalName",
    ] {
        assert!(skipped.contains(what), "{what} not in {skipped}");
    }
}

#[test]
fn the_changed_cluster_drops_the_removed_endpoint_and_adds_the_new_service() {
    let (a, b) = (import(V1), import(V2));
    let web = find(&b, "default/web:http");
    assert_eq!(web.backends, addrs(&["10.244.1.2:8080", "10.244.2.5:8080"]));
    assert_eq!(
        find(&b, "default/new:80").backends,
        addrs(&["10.244.1.3:8080"])
    );
    assert_eq!(b.services.len(), a.services.len() + 1);
}

/// A list with one Service (spec fields given as JSON) and one slice for it.
fn one(spec: &str, endpoints: &str, ports: &str) -> String {
    format!(
        r#"{{"kind": "List", "items": [
            {{"kind": "Service", "metadata": {{"name": "s", "namespace": "ns"}}, "spec": {spec}}},
            {{"kind": "EndpointSlice", "metadata": {{"name": "s-1", "namespace": "ns",
              "labels": {{"kubernetes.io/service-name": "s"}}}},
              "addressType": "IPv4", "endpoints": {endpoints}, "ports": {ports}}}
        ]}}"#
    )
}

const SPEC: &str = r#"{"clusterIP": "10.96.1.1", "ports": [{"name": "a", "port": 80}]}"#;
const PORTS: &str = r#"[{"name": "a", "port": 8080}]"#;

/// A Service labelled for another proxy is that proxy's, as kube-proxy reads the label.
#[test]
fn another_proxys_service_is_left_alone() {
    let ready = r#"[{"addresses": ["10.244.1.2"], "conditions": {"ready": true}}]"#;
    let text = one(SPEC, ready, PORTS).replacen(
        r#""namespace": "ns"}"#,
        r#""namespace": "ns", "labels": {"service.kubernetes.io/service-proxy-name": "other"}}"#,
        1,
    );
    let t = import(&text);
    assert!(t.services.is_empty(), "{:?}", t.services);
    assert_eq!(
        t.skipped,
        ["ns/s: another proxy's (service.kubernetes.io/service-proxy-name=other)"]
    );
    assert_eq!(import(&one(SPEC, ready, PORTS)).services.len(), 1);
}

#[test]
fn endpoint_conditions_follow_kube_proxy() {
    // Unset conditions: ready. Not ready and not terminating: never used.
    let t = import(&one(
        SPEC,
        r#"[{"addresses": ["10.244.1.2"]},
            {"addresses": ["10.244.1.3"], "conditions": {"ready": false}},
            {"addresses": ["10.244.1.4"], "conditions": {"ready": false, "serving": true, "terminating": true}}]"#,
        PORTS,
    ));
    assert_eq!(t.services[0].backends, addrs(&["10.244.1.2:8080"]));
    // Only terminating ones: those still serving; `serving` unset follows `ready`.
    let t = import(&one(
        SPEC,
        r#"[{"addresses": ["10.244.1.3"], "conditions": {"ready": false, "terminating": true}},
            {"addresses": ["10.244.1.4"], "conditions": {"ready": false, "serving": true, "terminating": true}}]"#,
        PORTS,
    ));
    assert_eq!(t.services[0].backends, addrs(&["10.244.1.4:8080"]));
    // The same endpoint in two slices counts once; ready wins.
    let t = import(&one(
        SPEC,
        r#"[{"addresses": ["10.244.1.2"], "conditions": {"ready": false}},
            {"addresses": ["10.244.1.2"], "conditions": {"ready": true}}]"#,
        PORTS,
    ));
    assert_eq!(t.services[0].backends, addrs(&["10.244.1.2:8080"]));
}

#[test]
fn ports_match_by_name_and_protocol() {
    let spec = r#"{"clusterIP": "10.96.1.1", "ports": [
        {"name": "a", "port": 80}, {"name": "b", "port": 81, "protocol": "UDP"}, {"name": "c", "port": 82}]}"#;
    let ports = r#"[{"name": "b", "port": 9001, "protocol": "UDP"}, {"name": "a", "port": 9000},
        {"name": "c", "port": 9002, "protocol": "UDP"}, {"name": "d"}]"#;
    let t = import(&one(spec, r#"[{"addresses": ["10.244.1.2"]}]"#, ports));
    let a = t.services.iter().find(|s| s.port == 80).unwrap();
    let b = t.services.iter().find(|s| s.port == 81).unwrap();
    let c = t.services.iter().find(|s| s.port == 82).unwrap();
    assert_eq!(a.backends, addrs(&["10.244.1.2:9000"]));
    assert_eq!(
        (b.proto, &b.backends[..]),
        (17, &addrs(&["10.244.1.2:9001"])[..])
    );
    // Name matches but protocol does not: no backend.
    assert!(c.backends.is_empty());
}

#[test]
fn traffic_policies_pick_this_nodes_endpoints() {
    let endpoints = r#"[{"addresses": ["10.244.1.2"]}, {"addresses": ["10.244.2.5"]},
        {"addresses": ["198.18.0.1"]},
        {"addresses": ["10.244.1.3"], "conditions": {"ready": false, "serving": true, "terminating": true}}]"#;
    let etp = r#"{"type": "LoadBalancer", "clusterIP": "10.96.1.1", "externalTrafficPolicy": "Local",
        "ports": [{"name": "a", "port": 80, "nodePort": 30000}]}"#;
    let s = &import(&one(etp, endpoints, PORTS)).services[0];
    assert_eq!(s.backends.len(), 3);
    // This node's: its pod subnet and its own address (host network).
    assert_eq!(
        s.external_local.as_deref(),
        Some(&addrs(&["10.244.1.2:8080", "198.18.0.1:8080"])[..])
    );
    // No local endpoint ready: the local serving terminating one, though remote ones are ready.
    let only_remote = r#"[{"addresses": ["10.244.2.5"]},
        {"addresses": ["10.244.1.3"], "conditions": {"ready": false, "serving": true, "terminating": true}}]"#;
    let s = &import(&one(etp, only_remote, PORTS)).services[0];
    assert_eq!(
        s.external_local.as_deref(),
        Some(&addrs(&["10.244.1.3:8080"])[..])
    );
    assert_eq!(s.backends, addrs(&["10.244.2.5:8080"]));
    // ETP Local without a NodePort changes nothing.
    let no_np = r#"{"clusterIP": "10.96.1.1", "externalTrafficPolicy": "Local", "ports": [{"name": "a", "port": 80}]}"#;
    assert_eq!(
        import(&one(no_np, endpoints, PORTS)).services[0].external_local,
        None
    );
    // ITP Local: the cluster IP reaches this node's endpoints only.
    let itp = r#"{"clusterIP": "10.96.1.1", "internalTrafficPolicy": "Local", "ports": [{"name": "a", "port": 80}]}"#;
    assert_eq!(
        import(&one(itp, endpoints, PORTS)).services[0].backends,
        addrs(&["10.244.1.2:8080", "198.18.0.1:8080"])
    );
    assert_eq!(
        import(&one(itp, endpoints, PORTS)).services[0].node_port_backends,
        None,
        "no NodePort"
    );
    // ITP Local with a NodePort and ETP Cluster: ITP is the cluster IP's only, the NodePort
    // reaches every endpoint (SNATed).
    let itp_np = r#"{"type": "NodePort", "clusterIP": "10.96.1.1", "internalTrafficPolicy": "Local",
        "ports": [{"name": "a", "port": 80, "nodePort": 30000}]}"#;
    let s = &import(&one(itp_np, endpoints, PORTS)).services[0];
    assert_eq!(s.backends, addrs(&["10.244.1.2:8080", "198.18.0.1:8080"]));
    assert_eq!(s.external_local, None);
    assert_eq!(
        s.node_port_backends.as_deref(),
        Some(&addrs(&["10.244.1.2:8080", "10.244.2.5:8080", "198.18.0.1:8080"])[..])
    );
    // Every endpoint is listed, whatever its conditions: a terminating one keeps its
    // connections at the import though it gets no new ones.
    let t = import(&one(SPEC, endpoints, PORTS));
    assert!(!t.services[0]
        .backends
        .contains(&addrs(&["10.244.1.3:8080"])[0]));
    assert!(t.listed.contains(&addrs(&["10.244.1.3:8080"])[0]));
    assert_eq!(t.listed.len(), 4);
    // With ETP Local too, the NodePort is this node's (and keeps the client); this node's
    // pods reach every endpoint through it, as kube-proxy's short-circuit does.
    let both = itp_np.replace(
        "\"internalTrafficPolicy\"",
        "\"externalTrafficPolicy\": \"Local\", \"internalTrafficPolicy\"",
    );
    let s = &import(&one(&both, endpoints, PORTS)).services[0];
    assert_eq!(
        s.node_port_backends.as_deref(),
        Some(&addrs(&["10.244.1.2:8080", "10.244.2.5:8080", "198.18.0.1:8080"])[..])
    );
    assert!(s.external_local.is_some());
}

#[test]
fn slices_of_other_namespaces_do_not_count() {
    let text = one(SPEC, r#"[{"addresses": ["10.244.1.2"]}]"#, PORTS).replace(
        r#""name": "s-1", "namespace": "ns""#,
        r#""name": "s-1", "namespace": "other""#,
    );
    assert!(import(&text).services[0].backends.is_empty());
}

#[test]
fn bad_input_is_an_error_that_names_it() {
    let ep = r#"[{"addresses": ["10.244.1.2"]}]"#;
    let cases = [
        ("not json".to_string(), "not a Kubernetes List"),
        ("[1, 2]".to_string(), "not a Kubernetes List"),
        (r#"{"kind": "List"}"#.to_string(), "missing field `items`"),
        (r#"{"kind": "Pod", "items": []}"#.to_string(), "kind \"Pod\" is not a List"),
        (r#"{"items": [{"kind": "Pod"}]}"#.to_string(), "items[0]: kind \"Pod\" is neither Service nor EndpointSlice"),
        (r#"{"items": [{"metadata": {}}]}"#.to_string(), "items[0]: kind is missing"),
        (one(SPEC, ep, PORTS).replace("\"port\": 80}", "\"port\": \"80\"}"), "items[0].spec.ports[0].port: invalid type"),
        (one(SPEC, ep, PORTS).replace("\"port\": 80}", "\"port\": 70000}"), "items[0] (Service ns/s): spec.ports[0]: port 70000 is not a port"),
        (one(SPEC, ep, PORTS).replace("10.96.1.1", "10.96.1.300"), "spec.clusterIP \"10.96.1.300\" is not an IP address"),
        (one(SPEC, ep, PORTS).replace("10.96.1.1", "10.244.1.9"), "items[0] (Service ns/s): spec.clusterIP 10.244.1.9 is inside the pod or uplink subnet"),
        (one(SPEC, ep, PORTS).replace("10.96.1.1", "198.18.0.1"), "spec.clusterIP 198.18.0.1 is inside the pod or uplink subnet"),
        (one(SPEC, r#"[{"addresses": ["10.244.1.256"]}]"#, PORTS), "items[1] (EndpointSlice ns/s-1): endpoints[0].addresses[0]: \"10.244.1.256\" is not an IPv4 address"),
        (one(SPEC, r#"[{"addresses": []}]"#, PORTS), "endpoints[0].addresses is empty"),
        (one(SPEC, ep, r#"[{"name": "a", "port": 0}]"#), "ports[0]: port 0 is not a port"),
        (one(SPEC, ep, r#"[{"name": "a", "port": 80, "protocol": "ICMP"}]"#), "protocol \"ICMP\" is not TCP, UDP or SCTP"),
        (one(SPEC, ep, PORTS).replace("\"addressType\": \"IPv4\"", "\"addressType\": \"IPX\""), "addressType \"IPX\""),
        (one(&SPEC.replace("\"clusterIP\"", "\"sessionAffinity\": \"ClientIP\", \"sessionAffinityConfig\": {\"clientIP\": {\"timeoutSeconds\": 0}}, \"clusterIP\""), ep, PORTS), "timeoutSeconds 0: expected 1 to 86400"),
        (one(&SPEC.replace("\"clusterIP\"", "\"sessionAffinity\": \"Sticky\", \"clusterIP\""), ep, PORTS), "sessionAffinity \"Sticky\""),
        (one(&SPEC.replace("\"clusterIP\"", "\"externalTrafficPolicy\": \"Nearby\", \"clusterIP\""), ep, PORTS), "externalTrafficPolicy \"Nearby\" is not Cluster or Local"),
        (one(&SPEC.replace("\"port\": 80}", "\"port\": 80, \"nodePort\": -1}"), ep, PORTS), "nodePort -1 is not a port"),
        (one(&SPEC.replace("[{\"name\": \"a\", \"port\": 80}]", "[{\"name\": \"a\", \"port\": 80}, {\"name\": \"b\", \"port\": 80}]"), ep, PORTS), "10.96.1.1:80 is already service \"ns/s:a\""),
        (one(SPEC, ep, PORTS).replace(r#""metadata": {"name": "s", "namespace": "ns"}, "spec": {"clusterIP": "10.96.1.1", "ports": [{"name": "a", "port": 80}]}"#, r#""metadata": {"name": "s", "namespace": "ns"}"#), "items[0] (Service ns/s): spec is missing"),
    ];
    for (text, needle) in cases {
        let e = error(&text);
        assert!(e.contains(needle), "expected {needle:?} in {e:?}");
    }
    // Two Services with one NodePort.
    let two = r#"{"items": [
        {"kind": "Service", "metadata": {"name": "a", "namespace": "n"}, "spec": {"clusterIP": "10.96.1.1", "ports": [{"port": 80, "nodePort": 30000}]}},
        {"kind": "Service", "metadata": {"name": "b", "namespace": "n"}, "spec": {"clusterIP": "10.96.1.2", "ports": [{"port": 80, "nodePort": 30000}]}}]}"#;
    assert!(error(two).contains("nodePort 30000 is already service \"n/a:80\""));
}

#[test]
fn an_empty_list_means_no_services() {
    let t = import(r#"{"apiVersion": "v1", "kind": "List", "items": []}"#);
    assert!(t.services.is_empty());
}

/// The agent imports with `Invalid::Skip`: one object of the cluster that cannot be read is
/// left out (named in `skipped`), a Service whole; the rest is imported.
#[test]
fn with_skip_invalid_a_bad_item_is_left_out_and_the_rest_imported() {
    let text = r#"{"items": [
        {"kind": "Service", "metadata": {"name": "good", "namespace": "n"},
         "spec": {"clusterIP": "10.96.1.1", "ports": [{"port": 80}]}},
        {"kind": "Service", "metadata": {"name": "bad", "namespace": "n"},
         "spec": {"clusterIP": "10.96.1.2", "ports": [{"name": "a", "port": 81, "nodePort": 30000},
                                                      {"name": "b", "port": 70000}]}},
        {"kind": "Service", "metadata": {"name": "later", "namespace": "n"},
         "spec": {"clusterIP": "10.96.1.3", "ports": [{"port": 82, "nodePort": 30000}]}},
        {"kind": "EndpointSlice", "metadata": {"name": "good-1", "namespace": "n",
         "labels": {"kubernetes.io/service-name": "good"}}, "addressType": "IPv4",
         "endpoints": [{"addresses": ["010.244.1.2"]}], "ports": [{"port": 8080}]},
        {"kind": "Pod", "metadata": {"name": "p", "namespace": "n"}}]}"#;
    let list = parse(text.as_bytes()).unwrap();
    let refused = translate(&list, &node(), Invalid::Refuse).unwrap_err();
    assert!(refused.contains("\"010.244.1.2\""), "{refused}");
    let t = translate(&list, &node(), Invalid::Skip).unwrap();
    let names: Vec<&str> = t.services.iter().map(|s| s.name.as_str()).collect();
    // The bad Service goes whole (its good port too), and frees the NodePort it took; the
    // Service whose slice could not be read goes too (short of those endpoints, it would
    // close their connections): the switch keeps their running versions.
    assert_eq!(names, ["n/later:82"]);
    assert_eq!(t.services[0].node_port, Some(30000));
    assert_eq!(t.left_out, ["n/good", "n/bad"]);
    assert_eq!(t.skipped.len(), 3, "{:?}", t.skipped);
    for (said, what) in t.skipped.iter().zip(["010.244.1.2", "Pod", "port 70000"]) {
        assert!(
            said.contains(what) && said.ends_with("(left out)"),
            "{said}"
        );
    }
}

/// A Service that collides with another is left out without taking the other's front away.
#[test]
fn a_left_out_service_leaves_the_fronts_of_others_alone() {
    let text = r#"{"items": [
        {"kind": "Service", "metadata": {"name": "a", "namespace": "n"},
         "spec": {"clusterIP": "10.96.1.1", "ports": [{"port": 80, "nodePort": 30000}]}},
        {"kind": "Service", "metadata": {"name": "b", "namespace": "n"},
         "spec": {"clusterIP": "10.96.1.1", "ports": [{"port": 80}]}},
        {"kind": "Service", "metadata": {"name": "c", "namespace": "n"},
         "spec": {"clusterIP": "10.96.1.1", "ports": [{"port": 80}]}},
        {"kind": "Service", "metadata": {"name": "d", "namespace": "n"},
         "spec": {"clusterIP": "10.96.1.4", "ports": [{"port": 80, "nodePort": 30000}]}}]}"#;
    let t = translate(&parse(text.as_bytes()).unwrap(), &node(), Invalid::Skip).unwrap();
    let names: Vec<&str> = t.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["n/a:80"], "{:?}", t.skipped);
    assert_eq!(t.left_out, ["n/b", "n/c", "n/d"]);
}
