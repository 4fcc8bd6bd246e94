#!/usr/bin/env python3
"""Writes what `kubectl get services,endpointslices -A -o json` prints for a large cluster.

  k8s_scale.py SERVICES ENDPOINTS_PER_SERVICE OUT.json

Services 10.96.x.y:80 (every 10th a NodePort, every 7th ClientIP affinity, every 13th ETP
Local), each with one EndpointSlice of pods spread over 10.244.0.0/16 (a tenth on this node's
10.244.1.0/24), one in 20 terminating. Indented with 4 spaces, as kubectl does."""
import json
import sys


def main():
    services, per, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    items = []
    ep = 0
    for i in range(services):
        name = f"svc-{i}"
        spec = {
            "clusterIP": f"10.96.{(i >> 8) & 0xff}.{i & 0xff}" if i < 65536 else None,
            "clusterIPs": [f"10.{96 + (i >> 16)}.{(i >> 8) & 0xff}.{i & 0xff}"],
            "internalTrafficPolicy": "Cluster",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
            "sessionAffinity": "ClientIP" if i % 7 == 0 else "None",
            "type": "ClusterIP",
        }
        spec["clusterIP"] = spec["clusterIPs"][0]
        if i % 10 == 0:
            spec["type"] = "NodePort"
            spec["ports"][0]["nodePort"] = 30000 + i // 10
            spec["externalTrafficPolicy"] = "Local" if i % 13 == 0 else "Cluster"
        items.append({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"creationTimestamp": "2025-05-01T10:00:00Z", "name": name,
                         "namespace": "default", "resourceVersion": str(1000 + i),
                         "uid": f"00000000-0000-0000-0000-{i:012d}", "labels": {"app": name}},
            "spec": spec, "status": {"loadBalancer": {}},
        })
        endpoints = []
        for j in range(per):
            local = ep % 10 == 0
            third = 1 if local else 2 + (ep >> 8) % 250
            addr = f"10.244.{third}.{2 + ep % 250}"
            terminating = ep % 20 == 19
            endpoints.append({
                "addresses": [addr],
                "conditions": {"ready": not terminating, "serving": True, "terminating": terminating},
                "nodeName": "node-1" if local else f"node-{third}",
                "targetRef": {"kind": "Pod", "name": f"{name}-{j}", "namespace": "default",
                              "uid": f"00000000-0000-0000-0001-{ep:012d}"},
            })
            ep += 1
        items.append({
            "addressType": "IPv4", "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "endpoints": endpoints,
            "metadata": {"name": f"{name}-abcde", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": name,
                                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                         "resourceVersion": str(2000 + i)},
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        })
    with open(out, "w") as f:
        json.dump({"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}}, f, indent=4)


main()
