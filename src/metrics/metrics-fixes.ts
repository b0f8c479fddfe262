// The fixes for metrics that cannot be served or written, as the daemon (failing at start)
// and doctor (checking beforehand) both print them.
import { UNIT_NAME as UNIT } from "../systemd/unit-name.js";

/** The commands that install one of the package's example drop-ins and apply it. */
export function installDropIn(name: "metrics-listen.conf" | "metrics-textfile.conf"): string {
  return (
    `install -D -m 0644 /usr/share/doc/gpu-persistd/examples/${name} /etc/systemd/system/${UNIT}.d/${name} && ` +
    `systemctl daemon-reload && systemctl restart ${UNIT}`
  );
}

/** The commands that let `user` create files in `dir`. */
export function grantWrite(user: string, dir: string): string {
  return `chgrp ${user} ${dir} && chmod g+w ${dir}`;
}

export const INSTALL_NODE_EXPORTER =
  "install node_exporter (Debian: apt-get install prometheus-node-exporter), or set metricsTextfile to its textfile directory";
