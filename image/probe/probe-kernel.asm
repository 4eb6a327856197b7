; probe-kernel.asm: a direct-boot (PVH) stand-in for OSv's kernel ELF.
;
; A 32-bit ELF with the note XEN_ELFNOTE_PHYS32_ENTRY (type 18), as QEMU's
; -kernel loads loader-stripped.elf (osv-image-format.md, section 10).  PVH
; enters it in flat 32-bit protected mode, paging off, EBX = the physical
; address of struct hvm_start_info.  It reports on COM1 (I/O 0x3F8):
;   PROBE cmdline=[<text of hvm_start_info.cmdline_paddr>]
;   PROBE virtio-blk=<transport address> version=<1: legacy, 2: modern>|none
;   PROBE sector0=<hex of the first 16 bytes of sector 0 of that disk>
;   PROBE part2 lba=<hex> sectors=<hex>   if sector 0 has 55 AA and entry 2
;   PROBE rofs-magic=ok|bad               the first sector of partition 2
;   PROBE done
; Failures print "PROBE fail <what>" and go on to "PROBE done".
;
; The disk is the first virtio-mmio block device among QEMU microvm's
; transports (0xFEB00000 + n * 0x200, the ones auto-kernel-cmdline lists as
; virtio_mmio.device=512@0xfeb00e00:12).  Sector 0 is read with one split
; virtqueue of 8 entries, polled (no interrupts); legacy (the QEMU default)
; and modern transports are both driven.
;
; Power-off: like OSv on a machine without ACPI it forces a triple fault, so
; QEMU resets, and exits with status 0 given -no-reboot.  This needs neither
; ACPI nor an isa-debug-exit device, and works under TCG and KVM.  With
; "@deaf" in the command line it never powers off (a guest that hangs).
;
; Build: nasm -f bin -o probe-kernel.elf probe-kernel.asm

bits 32
cpu 686

BASE        equ 0x100000            ; load (physical) address
COM1        equ 0x3F8
START_MAGIC equ 0x336EC578          ; hvm_start_info.magic
MMIO_BASE   equ 0xFEB00000          ; microvm's first virtio-mmio transport
MMIO_STRIDE equ 0x200
MMIO_COUNT  equ 24                  ; transports with ioapic2 (8 without)
CMDLINE_MAX equ 4096
QSIZE       equ 8
POLL_LIMIT  equ 0x4000000
PART2       equ 0x1CE               ; MBR entry 2 in sector 0

; virtio-mmio registers
R_MAGIC     equ 0x000
R_VERSION   equ 0x004
R_DEVICE    equ 0x008
R_DRVFEAT   equ 0x020
R_DRVFSEL   equ 0x024
R_PAGESIZE  equ 0x028               ; legacy
R_QSEL      equ 0x030
R_QNUMMAX   equ 0x034
R_QNUM      equ 0x038
R_QALIGN    equ 0x03C               ; legacy
R_QPFN      equ 0x040               ; legacy
R_QREADY    equ 0x044               ; modern
R_NOTIFY    equ 0x050
R_STATUS    equ 0x070
R_QDESC     equ 0x080               ; modern
R_QAVAIL    equ 0x090               ; modern
R_QUSED     equ 0x0A0               ; modern

; memory after the file (the PT_LOAD's memsz covers it)
VRING       equ BASE + ((file_end - ehdr + 0xFFF) & ~0xFFF)
AVAIL       equ VRING + 16 * QSIZE  ; legacy layout: right after the descriptors
USED        equ VRING + 0x1000      ; legacy layout: next 4 KiB boundary
REQ         equ VRING + 0x2000      ; virtio_blk_outhdr: type, reserved, sector
STATUS      equ REQ + 16
SECTOR      equ VRING + 0x2200
STACK_TOP   equ VRING + 0x3000
MEM_END     equ STACK_TOP

org BASE

ehdr:
        db      0x7F, "ELF", 1, 1, 1, 0 ; 32-bit, little-endian, version 1
        times 16 - ($ - ehdr) db 0
        dw      2                       ; e_type: ET_EXEC
        dw      3                       ; e_machine: EM_386
        dd      1                       ; e_version
        dd      pvh_entry               ; e_entry
        dd      phdrs - ehdr            ; e_phoff
        dd      0                       ; e_shoff
        dd      0                       ; e_flags
        dw      52                      ; e_ehsize
        dw      32                      ; e_phentsize
        dw      2                       ; e_phnum
        dw      40, 0, 0                ; e_shentsize, e_shnum, e_shstrndx
phdrs:
        dd      1                       ; PT_LOAD: the whole file, then memory
        dd      0
        dd      BASE, BASE
        dd      file_end - ehdr
        dd      MEM_END - BASE
        dd      7                       ; RWX
        dd      0x1000
        dd      4                       ; PT_NOTE
        dd      note - ehdr
        dd      note, note
        dd      note_end - note
        dd      note_end - note
        dd      4                       ; R
        dd      4
note:
        dd      4                       ; n_namesz
        dd      4                       ; n_descsz
        dd      18                      ; XEN_ELFNOTE_PHYS32_ENTRY
        db      "Xen", 0
        dd      pvh_entry
note_end:

pvh_entry:
        cli
        cld
        mov     esp, STACK_TOP
        mov     [start_info], ebx
        mov     edi, VRING              ; zero the rings, request and buffer
        mov     ecx, (MEM_END - VRING) / 4
        xor     eax, eax
        rep stosd
        call    report_cmdline
        call    report_sector0
        mov     esi, msg_done
        call    puts
        mov     esi, tag_deaf
        call    cmdline_has
        jc      halt_forever
        lidt    [null_idt]              ; no IDT: int3 -> #GP -> #DF -> triple fault
        int3
halt_forever:
        cli
        hlt
        jmp     halt_forever

; ESI = the command line (NUL-terminated; 0: none); CF set if the start
; info is not PVH's or the command line lies above 4 GiB.
cmdline_ptr:
        xor     esi, esi
        mov     ebx, [start_info]
        cmp     dword [ebx], START_MAGIC
        jne     .bad
        cmp     dword [ebx + 28], 0
        jne     .bad
        mov     esi, [ebx + 24]
        clc
        ret
.bad:
        stc
        ret

report_cmdline:
        call    cmdline_ptr
        jc      .bad
        push    esi
        mov     esi, msg_cmdline
        call    puts
        pop     esi
        test    esi, esi                ; cmdline_paddr 0: no command line
        jz      .close
        mov     ecx, CMDLINE_MAX
.next:
        lodsb
        test    al, al
        jz      .close
        call    putc
        loop    .next
.close:
        mov     esi, msg_close
        jmp     puts
.bad:
        mov     esi, msg_bad_start
        jmp     puts

; CF set when the command line contains the NUL-terminated string at ESI.
cmdline_has:
        mov     edx, esi
        call    cmdline_ptr
        jc      .no
        test    esi, esi
        jz      .no
        mov     edi, esi
        mov     ecx, CMDLINE_MAX
.start:
        cmp     byte [edi], 0
        je      .no
        mov     esi, edx
        mov     ebx, edi
.cmp:
        mov     al, [esi]
        test    al, al
        jz      .yes
        cmp     al, [ebx]
        jne     .miss
        inc     esi
        inc     ebx
        jmp     .cmp
.miss:
        inc     edi
        loop    .start
.no:
        clc
        ret
.yes:
        stc
        ret

; Find the virtio-mmio block device, read sector 0 and print its first 16 bytes.
report_sector0:
        mov     esi, msg_blk
        call    puts
        mov     edi, MMIO_BASE
        mov     ecx, MMIO_COUNT
.scan:
        cmp     dword [edi + R_MAGIC], 0x74726976   ; "virt"
        jne     .skip
        cmp     dword [edi + R_DEVICE], 2           ; block device
        je      .found
.skip:
        add     edi, MMIO_STRIDE
        loop    .scan
        mov     esi, msg_none
        jmp     puts
.found:
        mov     eax, edi
        call    puthex32
        mov     esi, msg_version
        call    puts
        mov     eax, [edi + R_VERSION]
        call    puthex4
        call    crlf
        mov     dword [edi + R_STATUS], 0           ; reset
        mov     dword [edi + R_STATUS], 1           ; ACKNOWLEDGE
        mov     dword [edi + R_STATUS], 3           ; DRIVER
        cmp     dword [edi + R_VERSION], 1
        je      .legacy
        cmp     dword [edi + R_VERSION], 2
        je      .modern
        mov     esi, msg_fail_version
        jmp     puts
.legacy:
        mov     dword [edi + R_DRVFSEL], 0
        mov     dword [edi + R_DRVFEAT], 0
        mov     dword [edi + R_PAGESIZE], 0x1000
        call    queue_size
        jc      .fail_queue
        mov     dword [edi + R_QALIGN], 0x1000
        mov     dword [edi + R_QPFN], VRING >> 12
        jmp     .driver_ok
.modern:
        mov     dword [edi + R_DRVFSEL], 1
        mov     dword [edi + R_DRVFEAT], 1          ; VIRTIO_F_VERSION_1 (bit 32)
        mov     dword [edi + R_DRVFSEL], 0
        mov     dword [edi + R_DRVFEAT], 0
        mov     dword [edi + R_STATUS], 11          ; + FEATURES_OK
        test    dword [edi + R_STATUS], 8
        jz      .fail_features
        call    queue_size
        jc      .fail_queue
        mov     dword [edi + R_QDESC], VRING
        mov     dword [edi + R_QDESC + 4], 0
        mov     dword [edi + R_QAVAIL], AVAIL
        mov     dword [edi + R_QAVAIL + 4], 0
        mov     dword [edi + R_QUSED], USED
        mov     dword [edi + R_QUSED + 4], 0
        mov     dword [edi + R_QREADY], 1
.driver_ok:
        mov     eax, [edi + R_STATUS]
        or      eax, 4                              ; DRIVER_OK
        mov     [edi + R_STATUS], eax
        ; three descriptors: header (read), sector (write), status (write)
        mov     dword [VRING + 0], REQ
        mov     dword [VRING + 8], 16
        mov     word [VRING + 12], 1                ; NEXT
        mov     word [VRING + 14], 1
        mov     dword [VRING + 16], SECTOR
        mov     dword [VRING + 24], 512
        mov     word [VRING + 28], 3                ; NEXT | WRITE
        mov     word [VRING + 30], 2
        mov     dword [VRING + 32], STATUS
        mov     dword [VRING + 40], 1
        mov     word [VRING + 44], 2                ; WRITE
        xor     eax, eax
        call    read_sector
        jc      .end
        mov     esi, msg_sector0
        call    puts
        mov     esi, SECTOR
        mov     ecx, 16
.byte:
        lodsb
        call    puthex8
        loop    .byte
        call    crlf
        ; OSv's root: MBR entry 2 (osv-image-format.md, section 4)
        cmp     word [SECTOR + 510], 0xAA55
        jne     .end
        cmp     byte [SECTOR + PART2 + 4], 0
        je      .end
        mov     esi, msg_part
        call    puts
        mov     eax, [SECTOR + PART2 + 8]
        call    puthex32
        mov     esi, msg_sectors
        call    puts
        mov     eax, [SECTOR + PART2 + 12]
        call    puthex32
        call    crlf
        mov     eax, [SECTOR + PART2 + 8]
        call    read_sector
        jc      .end
        mov     esi, msg_magic_ok
        cmp     dword [SECTOR], 0xDEADBEAD
        je      .magic
        mov     esi, msg_magic_bad
.magic:
        jmp     puts
.end:
        ret
.fail_queue:
        mov     esi, msg_fail_queue
        jmp     puts
.fail_features:
        mov     esi, msg_fail_features
        jmp     puts

; Read sector EAX of the disk at EDI into SECTOR; CF set (and reported) on failure.
read_sector:
        mov     dword [REQ], 0                      ; VIRTIO_BLK_T_IN
        mov     [REQ + 8], eax
        mov     dword [REQ + 12], 0
        mov     byte [STATUS], 0xFF
        movzx   edx, word [AVAIL + 2]               ; avail idx
        mov     eax, edx
        and     eax, QSIZE - 1
        mov     word [AVAIL + 4 + eax * 2], 0       ; the chain from descriptor 0
        inc     edx
        mov     [AVAIL + 2], dx
        mov     dword [edi + R_NOTIFY], 0
        mov     ecx, POLL_LIMIT
.poll:
        cmp     [USED + 2], dx                      ; used idx caught up
        je      .used
        pause
        loop    .poll
        mov     esi, msg_fail_timeout
        jmp     .fail
.used:
        cmp     byte [STATUS], 0
        je      .ok
        mov     esi, msg_fail_status
.fail:
        call    puts
        stc
        ret
.ok:
        clc
        ret

; Select queue 0 and give it QSIZE entries; CF set if it cannot hold that many.
queue_size:
        mov     dword [edi + R_QSEL], 0
        cmp     dword [edi + R_QNUMMAX], QSIZE
        jb      .small
        mov     dword [edi + R_QNUM], QSIZE
        clc
        ret
.small:
        stc
        ret

; Write AL to COM1 once the transmitter is empty.
putc:
        push    edx
        push    eax
        mov     dx, COM1 + 5
.wait:
        in      al, dx
        test    al, 0x20
        jz      .wait
        pop     eax
        mov     dx, COM1
        out     dx, al
        pop     edx
        ret

puts:
        lodsb
        test    al, al
        jz      .end
        call    putc
        jmp     puts
.end:
        ret

crlf:
        mov     esi, msg_crlf
        jmp     puts

puthex32:
        push    ecx
        mov     ecx, 8
.digit:
        rol     eax, 4
        call    puthex4
        loop    .digit
        pop     ecx
        ret

puthex8:
        rol     al, 4
        call    puthex4
        rol     al, 4
        ; fall through: the low nibble

; Print the low nibble of AL in hex; AL is kept.
puthex4:
        push    eax
        and     al, 0x0F
        add     al, '0'
        cmp     al, '9'
        jbe     .out
        add     al, 'a' - '0' - 10
.out:
        call    putc
        pop     eax
        ret

msg_cmdline:        db "PROBE cmdline=[", 0
msg_close:          db "]", 13, 10, 0
msg_bad_start:      db "PROBE fail start-info", 13, 10, 0
msg_blk:            db "PROBE virtio-blk=", 0
msg_none:           db "none", 13, 10, 0
msg_version:        db " version=", 0
msg_sector0:        db "PROBE sector0=", 0
msg_part:           db "PROBE part2 lba=", 0
msg_sectors:        db " sectors=", 0
msg_magic_ok:       db "PROBE rofs-magic=ok", 13, 10, 0
msg_magic_bad:      db "PROBE rofs-magic=bad", 13, 10, 0
msg_fail_version:   db "PROBE fail virtio-version", 13, 10, 0
msg_fail_features:  db "PROBE fail virtio-features", 13, 10, 0
msg_fail_queue:     db "PROBE fail virtio-queue", 13, 10, 0
msg_fail_status:    db "PROBE fail virtio-status", 13, 10, 0
msg_fail_timeout:   db "PROBE fail virtio-timeout", 13, 10, 0
msg_done:           db "PROBE done", 13, 10, 0
msg_crlf:           db 13, 10, 0
tag_deaf:           db "@deaf", 0

        align   4
null_idt:
        dw      0
        dd      0
start_info:
        dd      0

file_end:
