#!/bin/sh
# Turn on EMS/SAC on COM1, the boot manager on EMS, and NMI crash dumps in a Windows disk image,
# offline, from Linux (no Windows needed). See README.md in this folder for what each setting does.
#
#   images/windows/prepare-image.sh SOURCE OUTPUT.qcow2     # writes a prepared copy (SOURCE untouched)
#   images/windows/prepare-image.sh --in-place IMAGE        # edits IMAGE itself
#
# Needs (Debian): apt-get install libguestfs-tools libhivex-bin libwin-hivex-perl ntfs-3g qemu-utils
#
# What it writes (the same as these commands run inside Windows as Administrator):
#   bcdedit /ems {current} on                       -> loader element 260000b0 = true
#   bcdedit /emssettings EMSPORT:1 EMSBAUDRATE:115200 -> {emssettings} 15000022 = 1, 15000023 = 115200
#   bcdedit /set {bootmgr} bootems yes              -> {bootmgr} 16000020 = true
#   bcdedit /set {bootmgr} displaybootmenu yes      -> {bootmgr} 26000020 = true
#   bcdedit /set {bootmgr} timeout 10               -> {bootmgr} 25000004 = 10
#   bcdedit /debug {current} off                    -> loader element 260000a0 = false (NMI needs it off)
#   HKLM\SYSTEM\CurrentControlSet\Control\CrashControl  NMICrashDump=1 CrashDumpEnabled=1 AutoReboot=1
# {current} is the boot manager's default entry (its element 23000003) when Windows is not running.
set -eu

BOOTMGR='{9dea862c-5cdd-4e70-acc1-f32b344d4795}'
EMSSETTINGS='{0ce4991b-e6b3-4b16-b23c-5e0d9250e5d9}'
BCD_ROOT='HKEY_LOCAL_MACHINE\BCD00000000'

die() { echo "prepare-image.sh: $*" >&2; exit 2; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: apt-get install $2"; }

usage="usage: $0 SOURCE OUTPUT.qcow2 | $0 --in-place IMAGE"
[ $# -eq 2 ] || die "$usage"
need guestfish libguestfs-tools
need virt-win-reg libguestfs-tools
need hivexget libhivex-bin
need hivexregedit libwin-hivex-perl
need qemu-img qemu-utils

if [ "$1" = "--in-place" ]; then
    IMG=$2
    [ -f "$IMG" ] || die "no such image: $IMG"
else
    [ -f "$1" ] || die "no such image: $1"
    [ -e "$2" ] && die "$2 exists already; choose a new file name (the source is never modified)"
    echo "copying $1 to $2 (qcow2)"
    qemu-img convert -p -O qcow2 "$1" "$2"
    IMG=$2
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export LIBGUESTFS_BACKEND="${LIBGUESTFS_BACKEND:-direct}"

# ------------------------------------------------------------------ registry: crash control
echo "setting CrashControl (NMICrashDump=1, CrashDumpEnabled=1, AutoReboot=1)"
cat > "$TMP/system.reg" <<'EOF'
Windows Registry Editor Version 5.00

[HKEY_LOCAL_MACHINE\SYSTEM\CurrentControlSet\Control\CrashControl]
"NMICrashDump"=dword:00000001
"CrashDumpEnabled"=dword:00000001
"AutoReboot"=dword:00000001
EOF
virt-win-reg --merge "$IMG" "$TMP/system.reg"

# ------------------------------------------------------------------------ BCD: EMS and menu
# The BCD store is a registry hive: \Boot\BCD on the System Reserved (or C:) partition of a BIOS
# install, \EFI\Microsoft\Boot\BCD on the EFI system partition of a UEFI one.
BCD_FS=""
BCD_PATH=""
for fs in $(guestfish --ro -a "$IMG" run : list-filesystems | awk -F': ' '$2 == "ntfs" || $2 == "vfat" {print $1}'); do
    for candidate in /Boot/BCD /EFI/Microsoft/Boot/BCD; do
        real=$(guestfish --ro -a "$IMG" run : mount-ro "$fs" / : case-sensitive-path "$candidate" 2>/dev/null) || continue
        if [ "$(guestfish --ro -a "$IMG" run : mount-ro "$fs" / : is-file "$real")" = "true" ]; then
            BCD_FS=$fs
            BCD_PATH=$real
            break 2
        fi
    done
done
[ -n "$BCD_PATH" ] || die "no BCD store found (looked for /Boot/BCD and /EFI/Microsoft/Boot/BCD on every NTFS and FAT filesystem)"
echo "BCD store: $BCD_FS:$BCD_PATH"
guestfish --ro -a "$IMG" run : mount-ro "$BCD_FS" / : download "$BCD_PATH" "$TMP/BCD"

DEFAULT=$(hivexget "$TMP/BCD" "\\Objects\\$BOOTMGR\\Elements\\23000003" Element 2>/dev/null) ||
    die "the BCD store has no default boot entry ({bootmgr} element 23000003)"
echo "default boot entry ({current} at boot): $DEFAULT"

# Booleans are 1-byte REG_BINARY, integers 8-byte little-endian REG_BINARY.
cat > "$TMP/bcd.reg" <<EOF
Windows Registry Editor Version 5.00

[$BCD_ROOT\\Objects\\$DEFAULT\\Elements\\260000b0]
"Element"=hex:01

[$BCD_ROOT\\Objects\\$DEFAULT\\Elements\\260000a0]
"Element"=hex:00

[$BCD_ROOT\\Objects\\$EMSSETTINGS\\Description]
"Type"=dword:20100000

[$BCD_ROOT\\Objects\\$EMSSETTINGS\\Elements\\15000022]
"Element"=hex:01,00,00,00,00,00,00,00

[$BCD_ROOT\\Objects\\$EMSSETTINGS\\Elements\\15000023]
"Element"=hex:00,c2,01,00,00,00,00,00

[$BCD_ROOT\\Objects\\$BOOTMGR\\Elements\\16000020]
"Element"=hex:01

[$BCD_ROOT\\Objects\\$BOOTMGR\\Elements\\26000020]
"Element"=hex:01

[$BCD_ROOT\\Objects\\$BOOTMGR\\Elements\\25000004]
"Element"=hex:0a,00,00,00,00,00,00,00
EOF
hivexregedit --merge --prefix "$BCD_ROOT" "$TMP/BCD" "$TMP/bcd.reg"
guestfish -a "$IMG" run : mount "$BCD_FS" / : upload "$TMP/BCD" "$BCD_PATH"

echo "done: $IMG has EMS on COM1 at 115200, the boot menu on EMS (10 s), NMI crash dumps on."
echo "It still needs a user with a password for the Command Prompt channel (WINDOWS_USER / WINDOWS_PASSWORD)."
echo "Test it: make test-windows WINDOWS_IMAGE=$IMG WINDOWS_USER=Administrator WINDOWS_PASSWORD=..."
