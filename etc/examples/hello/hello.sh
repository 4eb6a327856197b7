#!/bin/sh
# A stand-in application file: the probe loader does not run programs, it
# reports what the VM sees of the disk. With a real OSv loader, put an OSv
# application here (e.g. a PIE built with -fPIE -pie) and keep run/default.
echo "Hello from OSv"
