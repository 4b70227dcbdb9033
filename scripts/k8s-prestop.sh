#!/usr/bin/env bash
# The preStop hook of the voice agent's KubeRay pods (k8s/base/rayservice.yaml).
#   k8s-prestop.sh node DEADLINE_S      a worker pod: drain this Ray node, wait for its Serve replicas to go
#   k8s-prestop.sh cluster DEADLINE_S   the head pod: wait while any router replica of the cluster lives
#
# node: Ray tells Serve the node is going away; Serve starts replacement replicas on other nodes and stops
# the ones here gracefully (each deployment's graceful_shutdown_timeout_s: a router replica keeps its
# WebSocket sessions until they end). The hook returns once no Serve replica runs in this pod.
# cluster: the routers' sessions need the head (GCS, Serve controller, memory actor) until they end, also
# when the whole cluster is being replaced (KubeRay's NewCluster upgrade deletes the old one).
# Either way it returns at DEADLINE_S at the latest; terminationGracePeriodSeconds must be longer.
set -u
mode=${1:?usage: k8s-prestop.sh node|cluster DEADLINE_S}
deadline_s=${2:?usage: k8s-prestop.sh node|cluster DEADLINE_S}
end=$((SECONDS + deadline_s))

case "$mode" in
  node)
    ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION \
      --reason-message "Kubernetes pod terminating" --deadline-remaining-seconds "$deadline_s" ||
      echo "k8s-prestop: drain request failed; waiting for the replicas anyway" >&2
    # Serve replicas' processes are titled ray::ServeReplica:<app>:<deployment>.
    busy() { pgrep -f "ServeReplica:" >/dev/null; }
    ;;
  cluster)
    busy() {
      ray list actors --filter "state=ALIVE" --filter "class_name=ServeReplica:voice-agent:Router" \
        --limit 1 --format json 2>/dev/null | grep -q '"actor_id"'
    }
    ;;
  *)
    echo "k8s-prestop: unknown mode $mode (node or cluster)" >&2
    exit 2
    ;;
esac

while ((SECONDS < end)) && busy; do
  sleep 2
done
