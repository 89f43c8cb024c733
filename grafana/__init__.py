"""Grafana provisioning for dc-energy-monitor, generated from rules/ and the InfluxDB schema by `dcem-grafana`.

The generated files sit beside this package: provisioning/ (datasource, dashboard provider, alert rules),
dashboards/ (dashboard JSON) and examples/ (a contact point and a notification policy). README.md says how to
install them and how they relate to the collector's own rule evaluation.
"""

DATASOURCE_UID = "dcem-influxdb"
DATASOURCE = {"type": "influxdb", "uid": DATASOURCE_UID}
EXPRESSION_UID = "__expr__"
