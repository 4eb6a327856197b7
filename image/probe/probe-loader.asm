; probe-loader.asm: a BIOS-bootable stand-in for the OSv loader.
;
; It keeps OSv's loader contract (osv-image-format.md, sections 1-4): the boot
; sector holds count32 at 0x10 and OSv's two INT 13h packets, reads the
; command-line area (63 sectors from LBA 1) to 0x7E00 and count32 x 32 KiB of
; "kernel" from LBA 128, then jumps there.  The kernel starts with an ELF
; header, so composers accept this file like a release loader.
;
; The kernel reports on COM1 what the VM sees of the disk:
;   PROBE cmdline=[<text up to the NUL>]
;   PROBE part2 lba=<hex> sectors=<hex>
;   PROBE rofs-magic=ok|bad
;   PROBE fnv1a=<hex>            FNV-1a 32 of every byte of partition 2
;   PROBE disk1=<hex>|none       first 8 bytes of the second BIOS disk
;   PROBE done
; then powers off through ACPI (QEMU exits with status 0).  If the command
; line contains "@hold" it waits for the ACPI power button first (a graceful
; guest, echoing serial input meanwhile); with "@deaf" it never powers off
; (a guest that ignores ACPI).
;
; Build: nasm -f bin -o probe-loader.bin probe-loader.asm

bits 16
cpu 486

KERNEL_SEG  equ 0x1000
BUF_SEG     equ 0x2000
CMDLINE     equ 0x7E00
CMDLINE_END equ 0x7E00 + 63 * 512
PART2       equ 0x7C00 + 0x1CE
COM1        equ 0x3F8
PM_BASE     equ 0x600

section boot start=0 vstart=0x7C00

        jmp     short boot_start
        nop
        times 0x10 - ($ - $$) db 0
count32:
        dw      1
kernel_dap:                             ; 0x12: 64 sectors from LBA 128
        db      0x10, 0
        dw      64
        dw      0, KERNEL_SEG
        dq      128
cmdline_dap:                            ; 0x22: 63 sectors from LBA 1
        db      0x10, 0
        dw      63
        dw      CMDLINE, 0
        dq      1

boot_start:
        cli
        xor     ax, ax
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     sp, 0x7C00
        sti
        mov     bp, dx                  ; BIOS boot drive in DL
        mov     si, cmdline_dap
        mov     ah, 0x42
        int     0x13
        jc      boot_fail
        mov     cx, [count32]
.read:
        mov     dx, bp
        mov     si, kernel_dap
        mov     ah, 0x42
        int     0x13
        jc      boot_fail
        add     word [kernel_dap + 6], 0x800
        add     dword [kernel_dap + 8], 64
        loop    .read
        mov     dx, bp
        jmp     KERNEL_SEG:entry

boot_fail:
        mov     si, boot_msg
.next:
        lodsb
        test    al, al
        jz      .off
        mov     dx, COM1
        out     dx, al
        jmp     .next
.off:
        mov     dx, PM_BASE + 4
        mov     ax, 0x2000
        out     dx, ax
        cli
        hlt

boot_msg:
        db      "PROBE fail boot-read", 13, 10, 0

        times 0x1B8 - ($ - $$) db 0
        db      "VSO", 0, 0, 0          ; OSv's disk signature
        times 0x1FE - ($ - $$) db 0     ; partition table: all zero
        dw      0xAA55

section cmdarea start=0x200 vstart=0
        times 0x10000 - 0x200 db 0

section kernel start=0x10000 vstart=0

        db      0x7F, "ELF", 1, 1, 1, 0 ; what composers check for
        times 64 - ($ - $$) db 0

entry:
        mov     ax, cs
        mov     ds, ax
        mov     [drive], dl
        call    report_cmdline
        call    report_partition
        call    report_disk1
        mov     si, msg_done
        call    puts
        mov     si, tag_deaf
        call    cmdline_has
        jc      halt_forever
        mov     si, tag_hold
        call    cmdline_has
        jnc     poweroff
        call    wait_power_button
poweroff:
        mov     dx, PM_BASE + 4         ; PM1a_CNT: SLP_EN, sleep type 0 (S5)
        mov     ax, 0x2000
        out     dx, ax
halt_forever:
        cli
        hlt
        jmp     halt_forever

; Enable the ACPI power button and poll its status bit; meanwhile echo
; whatever arrives on COM1 (so an interactive console can be tested).
wait_power_button:
        mov     dx, PM_BASE + 2         ; PM1a_EN
        mov     ax, 0x0100
        out     dx, ax
.poll:
        mov     dx, COM1 + 5            ; LSR: data ready?
        in      al, dx
        test    al, 0x01
        jz      .button
        mov     dx, COM1
        in      al, dx
        call    putc
.button:
        mov     dx, PM_BASE             ; PM1a_STS
        in      ax, dx
        test    ax, 0x0100
        jz      .poll
        mov     si, msg_button
        jmp     puts

report_cmdline:
        mov     si, msg_cmdline
        call    puts
        xor     ax, ax
        mov     es, ax
        mov     di, CMDLINE
.next:
        cmp     di, CMDLINE_END
        jae     .end
        mov     al, [es:di]
        test    al, al
        jz      .end
        call    putc
        inc     di
        jmp     .next
.end:
        mov     si, msg_close
        jmp     puts

report_partition:
        xor     ax, ax
        mov     es, ax
        mov     eax, [es:PART2 + 8]
        mov     [lba], eax
        mov     eax, [es:PART2 + 12]
        mov     [remaining], eax
        mov     si, msg_part
        call    puts
        mov     eax, [lba]
        call    puthex32
        mov     si, msg_sectors
        call    puts
        mov     eax, [remaining]
        call    puthex32
        call    crlf
        mov     dword [hash], 0x811C9DC5
        mov     byte [magic], 0
        mov     byte [first], 1
.chunk:
        mov     eax, [remaining]
        test    eax, eax
        jz      .report
        cmp     eax, 64
        jbe     .sized
        mov     eax, 64
.sized:
        mov     [dap + 2], ax
        mov     eax, [lba]
        mov     [dap + 8], eax
        mov     si, dap
        mov     dl, [drive]
        mov     ah, 0x42
        int     0x13
        jc      .fail
        mov     ax, BUF_SEG
        mov     es, ax
        cmp     byte [first], 0
        je      .hash
        mov     byte [first], 0
        cmp     dword [es:0], 0xDEADBEAD
        jne     .hash
        mov     byte [magic], 1
.hash:
        movzx   ecx, word [dap + 2]
        shl     ecx, 9
        xor     di, di
        mov     ebx, [hash]
.byte:
        xor     bl, [es:di]
        imul    ebx, ebx, 16777619
        inc     di
        dec     ecx
        jnz     .byte
        mov     [hash], ebx
        movzx   eax, word [dap + 2]
        add     [lba], eax
        sub     [remaining], eax
        jmp     .chunk
.fail:
        mov     si, msg_readfail
        jmp     puts
.report:
        mov     si, msg_magic_ok
        cmp     byte [magic], 1
        je      .magic
        mov     si, msg_magic_bad
.magic:
        call    puts
        mov     si, msg_hash
        call    puts
        mov     eax, [hash]
        call    puthex32
        jmp     crlf

report_disk1:
        mov     word [dap + 2], 1
        mov     dword [dap + 8], 0
        mov     si, dap
        mov     dl, 0x81
        mov     ah, 0x42
        int     0x13
        jc      .none
        mov     si, msg_disk1
        call    puts
        mov     ax, BUF_SEG
        mov     es, ax
        mov     eax, [es:0]
        bswap   eax
        call    puthex32
        mov     eax, [es:4]
        bswap   eax
        call    puthex32
        jmp     crlf
.none:
        mov     si, msg_nodisk1
        jmp     puts

; CF set when the command line contains the NUL-terminated string at DS:SI.
cmdline_has:
        xor     ax, ax
        mov     es, ax
        mov     di, CMDLINE
.start:
        cmp     byte [es:di], 0
        je      .no
        push    si
        push    di
.cmp:
        mov     al, [si]
        test    al, al
        jz      .yes
        cmp     al, [es:di]
        jne     .miss
        inc     si
        inc     di
        jmp     .cmp
.miss:
        pop     di
        pop     si
        inc     di
        cmp     di, CMDLINE_END
        jb      .start
.no:
        clc
        ret
.yes:
        pop     di
        pop     si
        stc
        ret

; Write AL to COM1 once the transmitter is empty.
putc:
        push    dx
        push    ax
        mov     dx, COM1 + 5
.wait:
        in      al, dx
        test    al, 0x20
        jz      .wait
        pop     ax
        mov     dx, COM1
        out     dx, al
        pop     dx
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
        mov     si, msg_crlf
        jmp     puts

puthex32:
        mov     cx, 8
.digit:
        rol     eax, 4
        push    eax
        and     al, 0x0F
        add     al, '0'
        cmp     al, '9'
        jbe     .out
        add     al, 'a' - '0' - 10
.out:
        call    putc
        pop     eax
        loop    .digit
        ret

msg_cmdline:    db "PROBE cmdline=[", 0
msg_close:      db "]", 13, 10, 0
msg_part:       db "PROBE part2 lba=", 0
msg_sectors:    db " sectors=", 0
msg_magic_ok:   db "PROBE rofs-magic=ok", 13, 10, 0
msg_magic_bad:  db "PROBE rofs-magic=bad", 13, 10, 0
msg_hash:       db "PROBE fnv1a=", 0
msg_readfail:   db "PROBE fail partition-read", 13, 10, 0
msg_disk1:      db "PROBE disk1=", 0
msg_nodisk1:    db "PROBE disk1=none", 13, 10, 0
msg_done:       db "PROBE done", 13, 10, 0
msg_button:     db "PROBE power-button", 13, 10, 0
msg_crlf:       db 13, 10, 0
tag_hold:       db "@hold", 0
tag_deaf:       db "@deaf", 0

dap:
        db      0x10, 0
        dw      0
        dw      0, BUF_SEG
        dq      0
drive:          db 0
first:          db 0
magic:          db 0
lba:            dd 0
remaining:      dd 0
hash:           dd 0

        times 0x8000 - ($ - $$) db 0
