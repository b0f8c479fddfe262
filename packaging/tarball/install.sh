#!/bin/sh
# gpu-persistd's installer for systemd distributions without a package of ours: copies root/
# (beside this script) to /, creates the nvidia-persistenced user (systemd-sysusers), enables
# and starts gpu-persistd.service. It records what it created in /var/lib/gpu-persistd, so
#   sudo ./install.sh --uninstall
# removes exactly that: files, directories, enablement, configuration and the user if it made it.
set -eu

UNIT=gpu-persistd.service
STATE=/var/lib/gpu-persistd
MANIFEST=$STATE/installed-files

die() {
	echo "install.sh: $*" >&2
	exit 1
}

[ "$(id -u)" -eq 0 ] || die "must run as root: sudo $0 $*"
[ -d /run/systemd/system ] || die "systemd is not the running init here (no /run/systemd/system); gpu-persistd is a systemd service"

uninstall() {
	[ -e "$MANIFEST" ] || die "nothing to uninstall: $MANIFEST is missing (was gpu-persistd installed by a package? then remove it with apt-get purge or rpm -e)"
	systemctl disable --now gpu-persistd.socket "$UNIT" >/dev/null 2>&1 || true
	# Files first, then the directories this script created, deepest first.
	grep '^f ' "$MANIFEST" | cut -c3- | while IFS= read -r path; do rm -f "$path"; done
	grep '^d ' "$MANIFEST" | cut -c3- | sort -r | while IFS= read -r path; do rmdir "$path" 2>/dev/null || echo "install.sh: kept $path: it holds files that are not gpu-persistd's" >&2; done
	if [ -e "$STATE/created-user" ] && getent passwd nvidia-persistenced >/dev/null; then
		userdel nvidia-persistenced || echo "install.sh: could not remove user nvidia-persistenced; remove it with: userdel nvidia-persistenced" >&2
	fi
	rm -rf "$STATE"
	systemctl daemon-reload
	echo "gpu-persistd: uninstalled"
}

if [ "${1-}" = --uninstall ]; then
	uninstall
	exit 0
fi
[ $# -eq 0 ] || die "unknown argument '$1': run it with no argument to install, or with --uninstall"

here=$(cd "$(dirname "$0")" && pwd)
[ -d "$here/root/usr/lib/gpu-persistd" ] || die "$here/root is missing: run the install.sh inside the unpacked gpu-persistd tarball"
if command -v dpkg-query >/dev/null && dpkg-query -W -f='${db:Status-Status}\n' gpu-persistd gpu-persistd-standalone 2>/dev/null | grep -qx installed; then
	die "gpu-persistd is installed from a .deb here; upgrade with that package rather than this tarball (or apt-get purge it first)"
fi
if command -v rpm >/dev/null && rpm -q gpu-persistd >/dev/null 2>&1; then
	die "gpu-persistd is installed from an .rpm here; upgrade with that package rather than this tarball (or rpm -e it first)"
fi
if [ -e /usr/bin/gpu-persistd ] && [ ! -e "$MANIFEST" ]; then
	die "/usr/bin/gpu-persistd exists but was not installed by this script: remove that installation first"
fi

# A reinstall (an upgrade) keeps the first install's record of what existed before it.
mkdir -p "$STATE"
[ -e "$MANIFEST" ] || : >"$MANIFEST"
if [ ! -e "$STATE/recorded-user" ]; then
	getent passwd nvidia-persistenced >/dev/null || : >"$STATE/created-user"
	: >"$STATE/recorded-user"
fi

(cd "$here/root" && find . -mindepth 1 -type d | cut -c2- | sort) | while IFS= read -r dir; do
	if [ ! -d "$dir" ]; then
		mkdir -m 0755 "$dir"
		echo "d $dir" >>"$MANIFEST"
	fi
done
(cd "$here/root" && find . -type f | cut -c2- | sort) | while IFS= read -r file; do
	# The admin's configuration survives a reinstall, as a package's conffile would.
	if [ "$file" = /etc/gpu-persistd/config.json ] && [ -e "$file" ]; then
		grep -qx "f $file" "$MANIFEST" || echo "f $file" >>"$MANIFEST"
		continue
	fi
	install -m "$(stat -c %a "$here/root$file")" "$here/root$file" "$file"
	grep -qx "f $file" "$MANIFEST" || echo "f $file" >>"$MANIFEST"
done

systemd-sysusers gpu-persistd.conf
systemctl daemon-reload
systemctl enable gpu-persistd.socket "$UNIT" >/dev/null 2>&1
systemctl start gpu-persistd.socket
# As the .deb's postinst: without the driver, the daemon would wait for it and hold this up.
if [ ! -e /proc/driver/nvidia/version ] && ! systemctl show -p ExecStart --value "$UNIT" | grep -q -- --simulate; then
	echo "gpu-persistd: installed; the NVIDIA driver is not loaded, so the service is enabled but not started; it starts at boot, or now with: systemctl start gpu-persistd" >&2
elif systemctl restart "$UNIT"; then
	echo "gpu-persistd: installed and started; 'gpu-persistd status' shows the GPUs it holds"
else
	echo "gpu-persistd: installed, but the service did not start; 'gpu-persistd doctor' says why and how to fix it" >&2
fi
