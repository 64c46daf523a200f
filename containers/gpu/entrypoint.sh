#!/bin/sh
# Entry point of the GPU image: `docker run IMAGE serve` runs `smserve serve`.
#
# Before that, CUDA forward compatibility: when the host's NVIDIA driver is older than the
# driver the image's CUDA ships in /usr/local/cuda/compat (the cuda-compat package of the
# nvidia/cuda base image), put that compat libcuda first on the library path, as AWS
# documents for SageMaker hosts with older drivers. Newer host drivers are left alone.
# SMSERVE_CUDA_COMPAT=off disables this.
set -eu

compat=/usr/local/cuda/compat
if [ "${SMSERVE_CUDA_COMPAT:-auto}" != "off" ] && [ -d "$compat" ] \
        && [ -r /proc/driver/nvidia/version ]; then
    host=$(sed -n 's/.*Kernel Module[^0-9]*\([0-9][0-9.]*\).*/\1/p' /proc/driver/nvidia/version \
        | head -n 1)
    shipped=$(find "$compat" -maxdepth 1 -name 'libcuda.so.*.*' 2>/dev/null \
        | sed 's/.*libcuda\.so\.//' | head -n 1)
    if [ -n "$host" ] && [ -n "$shipped" ] && [ "$host" != "$shipped" ]; then
        oldest=$(printf '%s\n%s\n' "$host" "$shipped" | sort -V | head -n 1)
        if [ "$oldest" = "$host" ]; then
            echo "smserve: host driver $host is older than CUDA's $shipped;" \
                 "using $compat (forward compatibility)" >&2
            LD_LIBRARY_PATH="$compat${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            export LD_LIBRARY_PATH
        fi
    fi
fi

exec /opt/venv/bin/smserve "$@"
