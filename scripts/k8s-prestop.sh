#!/usr/bin/env bash
# A KubeRay worker pod's preStop hook: drain this Ray node before the pod's processes get SIGTERM.
#   k8s-prestop.sh DEADLINE_S
# Ray tells Serve the node is going away; Serve starts replacement replicas on other nodes and stops the
# ones here gracefully (each deployment's graceful_shutdown_timeout_s: a router replica keeps its
# WebSocket sessions until they end). The hook returns once no Serve replica runs in this pod, or at the
# deadline; terminationGracePeriodSeconds must be longer.
set -u
deadline_s=${1:?usage: k8s-prestop.sh DEADLINE_S}
ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION \
  --reason-message "Kubernetes pod terminating" --deadline-remaining-seconds "$deadline_s" ||
  echo "k8s-prestop: drain request failed; waiting for the replicas anyway" >&2
end=$((SECONDS + deadline_s))
# Serve replicas' processes are titled ray::ServeReplica:<app>:<deployment>.
while pgrep -f "ServeReplica:" >/dev/null && ((SECONDS < end)); do
  sleep 2
done
