#!/usr/bin/env bash
# The monitoring files, checked by the real tools: Prometheus's config and
# rules (syntax, and a unit test per alert), Alertmanager's routes.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== promtool check config"
promtool check config prometheus/prometheus.yml
echo "== promtool check rules"
promtool check rules prometheus/rules/*.yml
echo "== promtool test rules"
promtool test rules prometheus/tests/alerts_test.yml
echo "== amtool check-config"
amtool check-config deployment/alertmanager/alertmanager.yml
