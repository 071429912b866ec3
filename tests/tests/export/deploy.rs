//! The shipped deployment files: scrape config, dashboard, DaemonSet, PodMonitor, network policy.

use std::{path::Path, process::Command};

use super::{shipped_daemonset, yaml_documents};

/// The shipped static scrape config is valid for Prometheus' own checker.
#[test]
fn shipped_scrape_config_is_valid() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus-static.yaml");
    let output = Command::new("promtool")
        .args(["check", "config"])
        .arg(&config)
        .output()
        .expect("promtool");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// The shipped dashboard's `$node` picker applies to every metric of
/// every panel.
#[test]
fn shipped_dashboard_filters_every_metric_by_node() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(str::to_string))
        .collect();
    assert!(!exprs.is_empty());
    for expr in exprs {
        let selectors = expr.matches("mmapwatch_").count();
        let filtered = expr.matches("{node=~\"$node\"").count();
        assert_eq!(
            selectors, filtered,
            "a metric without the $node filter: {expr}"
        );
    }
}

/// The shipped PodMonitor selects the DaemonSet's pods in their namespace,
/// scrapes the port the exporter listens on, and labels series by node
/// as the dashboard's `$node` expects.
#[test]
fn shipped_pod_monitor_scrapes_the_daemonset() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let daemonset = shipped_daemonset();
    let [monitor] = &yaml_documents(&deploy.join("podmonitor.yaml"))[..] else {
        panic!("podmonitor.yaml: one document expected");
    };
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["kind"], "PodMonitor");
    let namespace = &daemonset["metadata"]["namespace"];
    assert_eq!(&monitor["metadata"]["namespace"], namespace);
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"][0],
        *namespace
    );
    let pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    for (label, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(pod_labels.get(label), Some(value), "selector {label}");
    }
    let container = &daemonset["spec"]["template"]["spec"]["containers"][0];
    let listen_port: u64 = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|arg| {
            arg.as_str()?
                .strip_prefix("--listen=")?
                .rsplit_once(':')?
                .1
                .parse()
                .ok()
        })
        .expect("--listen=ADDRESS:PORT in the DaemonSet");
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    let port = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|port| port["name"] == endpoint["port"])
        .expect("the endpoint's port is a named port of the container");
    assert_eq!(port["containerPort"], listen_port);
    assert_eq!(endpoint["path"], "/metrics");
    let relabelings = endpoint["relabelings"].as_array().unwrap();
    assert!(
        relabelings.iter().any(|r| {
            r["sourceLabels"][0] == "__meta_kubernetes_pod_node_name" && r["targetLabel"] == "node"
        }),
        "no node label: {relabelings:?}"
    );
}

/// The shipped NetworkPolicy closes the DaemonSet's pods to everything
/// but the scraper, on the metrics port only.
#[test]
fn shipped_network_policy_admits_only_the_scraper() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let daemonset = shipped_daemonset();
    let [policy] = &yaml_documents(&deploy.join("networkpolicy.yaml"))[..] else {
        panic!("networkpolicy.yaml: one document expected");
    };
    assert_eq!(policy["kind"], "NetworkPolicy");
    assert_eq!(
        policy["metadata"]["namespace"],
        daemonset["metadata"]["namespace"]
    );
    let pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    let selected = policy["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap();
    assert!(!selected.is_empty());
    for (label, value) in selected {
        assert_eq!(pod_labels.get(label), Some(value), "podSelector {label}");
    }
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "one rule: the scraper");
    // A source is named (an empty `from` would admit everyone) ...
    let sources = rules[0]["from"].as_array().unwrap();
    assert!(!sources.is_empty());
    for source in sources {
        assert!(
            source["podSelector"]["matchLabels"].is_object()
                || source["namespaceSelector"]["matchLabels"].is_object(),
            "{source}"
        );
    }
    // ... and only the container's metrics port is open.
    let container = &daemonset["spec"]["template"]["spec"]["containers"][0];
    let port_names: Vec<&serde_json::Value> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["name"])
        .collect();
    let ports = rules[0]["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1);
    assert!(port_names.contains(&&ports[0]["port"]), "{ports:?}");
}
