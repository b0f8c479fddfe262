// The control socket's commands, answered from the daemon's status snapshot.
import { clientText } from "../connections/client-text.js";
import { BadRequest, type ControlRequest } from "../control/control-server.js";
import type { DaemonContext } from "./context.js";
import { daemonStatus } from "./status-snapshot.js";

export function controlHandler(ctx: DaemonContext): (request: ControlRequest) => unknown {
  return (request) => {
    if (request.command === "status") return daemonStatus(ctx);
    throw new BadRequest(`unknown command ${clientText(request.command)} (known: status)`);
  };
}
