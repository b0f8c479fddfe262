// Metrics, when configured: whether gpu-persistd.service lets the daemon serve or write
// them (the hardened unit has no network and a read-only /var until a drop-in says so),
// and whether the textfile's directory is there and writable by the daemon's user.

import { statSync } from "node:fs";
import { dirname } from "node:path";
import { formatListenAddress, type ListenAddress } from "../config/listen-address.js";
import type { Config } from "../config/schema.js";
import { grantWrite, INSTALL_NODE_EXPORTER, installDropIn } from "../metrics/metrics-fixes.js";
import { UNIT_NAME as UNIT } from "../systemd/unit-name.js";
import { type Check, fail, pass } from "./check.js";
import { type Account, accountMay, type HostRoot } from "./host-root.js";

const YES = /^(yes|true|on|1)$/i;

function listenCheck(host: HostRoot, listen: ListenAddress): Check {
  const address = formatListenAddress(listen);
  const title = "metrics listener";
  const privateNetwork = YES.test(host.unitDirective(UNIT, "PrivateNetwork").at(-1)?.value ?? "");
  const families = host.unitDirective(UNIT, "RestrictAddressFamilies").flatMap((d) => d.value.split(/\s+/));
  const family = address.startsWith("[") ? "AF_INET6" : "AF_INET";
  // An allow-list without the family, or a deny-list ("~AF_INET ...") with it, forbids it.
  const denied = families[0]?.startsWith("~")
    ? families.some((f) => f.replace(/^~/, "") === family)
    : families.length > 0 && !families.includes(family);
  if (!host.unitFile(UNIT) || (!privateNetwork && !denied)) {
    return pass("metrics-listen", title, `${address}: the unit allows ${family} on the host's network`);
  }
  const why = privateNetwork
    ? "PrivateNetwork=yes (its own empty network)"
    : `RestrictAddressFamilies without ${family}`;
  return fail(
    "metrics-listen",
    title,
    `metricsListen is ${address}, but ${UNIT} has ${why}`,
    installDropIn("metrics-listen.conf"),
  );
}

function textfileCheck(host: HostRoot, path: string, account: Account | null): Check {
  const title = "metrics textfile";
  const dir = dirname(path);
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(host.path(dir));
  } catch {
    return fail("metrics-textfile", title, `${dir} does not exist`, INSTALL_NODE_EXPORTER);
  }
  const strict = /^strict$/i.test(host.unitDirective(UNIT, "ProtectSystem").at(-1)?.value ?? "");
  const writable = host
    .unitDirective(UNIT, "ReadWritePaths")
    .flatMap((d) => d.value.split(/\s+/))
    .map((p) => p.replace(/^[-+]+/, ""));
  const covered = writable.some((p) => dir === p || dir.startsWith(`${p.replace(/\/$/, "")}/`));
  if (host.unitFile(UNIT) && strict && !covered) {
    return fail(
      "metrics-textfile",
      title,
      `${UNIT} makes ${dir} read-only (ProtectSystem=strict, no ReadWritePaths= for it)`,
      installDropIn("metrics-textfile.conf"),
    );
  }
  if (account && !accountMay(account, st, 3)) {
    return fail(
      "metrics-textfile",
      title,
      `${account.name} cannot create files in ${dir} (mode ${(st.mode & 0o777).toString(8).padStart(4, "0")}, owner ${st.uid}:${st.gid})`,
      grantWrite(account.name, dir),
    );
  }
  return pass(
    "metrics-textfile",
    title,
    `${path}: the unit may write ${dir}${account ? `, and so may ${account.name}` : ""}`,
  );
}

export function metricsChecks(host: HostRoot, config: Config, account: Account | null): Check[] {
  if (!config.metricsListen && !config.metricsTextfile) {
    return [pass("metrics", "metrics", "off (metricsListen and metricsTextfile are empty)")];
  }
  return [
    ...(config.metricsListen ? [listenCheck(host, config.metricsListen)] : []),
    ...(config.metricsTextfile ? [textfileCheck(host, config.metricsTextfile, account)] : []),
  ];
}
