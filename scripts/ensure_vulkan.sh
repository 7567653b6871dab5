#!/usr/bin/env bash
# Makes sure a Vulkan driver exists for the GPU tests. On a machine without
# one, installs Mesa's software driver lavapipe (Debian/Ubuntu, as root), so
# the GPU kernels are tested on every machine that runs `make test`.
set -euo pipefail
has_driver() {
    { compgen -G '/usr/share/vulkan/icd.d/*.json' || compgen -G '/etc/vulkan/icd.d/*.json'; } >/dev/null &&
        # grep reads the whole list: with -q it would stop at the first match,
        # and ldconfig's SIGPIPE would fail the pipeline under pipefail.
        ldconfig -p 2>/dev/null | grep 'libvulkan\.so\.1' >/dev/null
}
if has_driver; then
    exit 0
fi
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "no Vulkan driver: installing Mesa's lavapipe (mesa-vulkan-drivers libvulkan1)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
    has_driver && exit 0
fi
echo "no Vulkan driver found and none could be installed: the GPU tests need one." >&2
echo "Install your GPU's driver, or Mesa's lavapipe: apt-get install mesa-vulkan-drivers libvulkan1" >&2
exit 1
