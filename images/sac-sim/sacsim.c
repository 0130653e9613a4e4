/*
 * sacsim: a SIMULATOR of Windows' Special Administration Console (SAC over EMS), for sercon's tests.
 *
 * It is not Windows and never claims to be: `id` says "SAC simulator (sercon)". It runs on the
 * guest side of a real 16550 (ttyS0 of a busybox guest, started by init in place of getty), so
 * sercon's SAC driver is exercised through the whole console path: QEMU's UART, the console
 * owner, its socket and the serial log.
 *
 * Modelled:
 *  - <machine-info> XML, banner "Computer is booting, SAC started and initialized.", prompt "SAC>";
 *  - commands ?/help, ch (-?, -si, -sn, -ci, -cn), cmd, d, i, id, k, lock, p, restart, s,
 *    shutdown, t, crashdump; "Unrecognized command." for anything else;
 *  - input: bare CR or Ctrl-C ends a line, LF is ignored, Tab and VT100 cursor keys ring BEL,
 *    backspace edits, output wrapped at 80 columns, pages of 23 lines when paging is on;
 *  - channels: Esc Tab shows the next channel's switch screen, Esc Tab 0 returns to SAC, any other
 *    key views the channel; a Cmd channel (80x24 screen, no scrollback: switching back redraws
 *    the last 24 lines) asks Username / Domain / Password and then runs a small command
 *    interpreter (echo, ver, hostname, whoami, cd, cls, set, prompt, tasklist, systeminfo, exit,
 *    `| more` paging, %VAR% and %ERRORLEVEL%);
 *  - the boot phase in which `cmd` fails because the CMD service has not registered yet, ended by
 *    "EVENT: The CMD command is now available.";
 *  - NMI: the guest kernel's own NMI report (read from /dev/kmsg) becomes a bugcheck 0x80
 *    NMI_HARDWARE_FAILURE screen (<BP> XML, "!SAC>", stop code), then a reboot (or a halt with
 *    sacsim.autoreboot=0); `crashdump` does the same with 0xE2 MANUALLY_INITIATED_CRASH.
 *
 * Where each canned text comes from (public documents, by title and section). The simulator
 * reproduces what they show; where they show nothing, the text is sercon's own and says so.
 *  - banner, prompt, `?` help list, `ch`/`cmd`/`lock`/`t`/`k`/`i`/`id`/`restart`/`shutdown`/
 *    `crashdump` and their error lines ("Unrecognized command.  Try the 'help' command for more
 *    details.", "Error: There is no channel present at the specified index."): Microsoft,
 *    "Special Administration Console (SAC) and SAC commands" (Windows Server 2003 Technical
 *    Reference, Emergency Management Services section, "SAC commands");
 *  - the `cmd` flow (cmd, `ch -si 1` or Esc Tab, Enter, then Username/Domain/Password): Microsoft
 *    Learn, "Azure Serial Console for Windows", section "Use CMD or PowerShell in Serial Console";
 *  - "EVENT:   A new channel has been created.  Use "ch -?" for channel help." + "Channel: CmdNNNN",
 *    "EVENT: The CMD command is now available.", and the "not yet registered" refusal: the same
 *    Technical Reference, "SAC commands" (cmd), and its "Troubleshooting EMS" section;
 *  - <machine-info>, <channel-switch> (name, description, type, guid, application-type and the
 *    fixed SAC/CMD application GUIDs) and the <BP> BLUESCREEN XML: Microsoft, "Headless Server
 *    and EMS Design" (section "EMS XML output");
 *  - stop codes 0x80 NMI_HARDWARE_FAILURE and 0xE2 MANUALLY_INITIATED_CRASH: Microsoft Learn,
 *    "Bug Check Code Reference", "Bug Check 0x80" and "Bug Check 0xE2"; NMI to a bugcheck:
 *    Microsoft Support KB 927069, "How to generate a complete crash dump file or a kernel crash
 *    dump file by using an NMI on a Windows-based system";
 *  - sercon's own wording (no public source shows it): "Channel CmdNNNN has been closed.", the
 *    "A channel has been closed." event, the `i` note, and everything the Cmd interpreter prints.
 *
 * Settings come from the kernel command line: sacsim.user=, sacsim.password=, sacsim.name=,
 * sacsim.cmd_delay= (seconds before the CMD service registers), sacsim.autoreboot=0|1.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/reboot.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define COLS 80
#define ROWS 24
#define PAGE (ROWS - 1)
#define MAXCH 10
#define MAXLINE 256
#define SAC_MAXINPUT 72
#define HIST 8192
#define NVARS 32

static const char *CMD_APP_GUID = "63d02271-8aa4-11d5-bccf-00b0d014a2d0";
static const char *SAC_APP_GUID = "63d02270-8aa4-11d5-bccf-00b0d014a2d0";

/* ------------------------------------------------------------------ settings */

static char cfg_user[64] = "Administrator";
static char cfg_password[64] = "sercon";
static char cfg_name[64] = "SACSIM";
static int cfg_cmd_delay = 8;
static int cfg_autoreboot = 1;

static void read_settings(void)
{
    char buf[4096];
    int fd = open("/proc/cmdline", O_RDONLY);
    if (fd < 0)
        return;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return;
    buf[n] = 0;
    for (char *tok = strtok(buf, " \n"); tok; tok = strtok(NULL, " \n")) {
        if (!strncmp(tok, "sacsim.user=", 12))
            snprintf(cfg_user, sizeof cfg_user, "%s", tok + 12);
        else if (!strncmp(tok, "sacsim.password=", 16))
            snprintf(cfg_password, sizeof cfg_password, "%s", tok + 16);
        else if (!strncmp(tok, "sacsim.name=", 12))
            snprintf(cfg_name, sizeof cfg_name, "%s", tok + 12);
        else if (!strncmp(tok, "sacsim.cmd_delay=", 17))
            cfg_cmd_delay = atoi(tok + 17);
        else if (!strncmp(tok, "sacsim.autoreboot=", 18))
            cfg_autoreboot = atoi(tok + 18);
    }
}

/* -------------------------------------------------------------------- output */

static void out_raw(const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(1, data, len);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return;
        }
        data += n;
        len -= (size_t)n;
    }
}

static void copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (n >= cap)
        n = cap - 1;
    memmove(dst, src, n);
    dst[n] = 0;
}

static void out(const char *s) { out_raw(s, strlen(s)); }

static void bel(void) { out("\a"); }

/* Text with "\n" line ends becomes CRLF text wrapped at 80 columns, appended to a growable buffer. */
struct buf {
    char *data;
    size_t len, cap;
};

static void buf_add(struct buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->data = realloc(b->data, b->cap);
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
}

static void buf_text(struct buf *b, const char *text)
{
    int col = 0;
    for (const char *p = text; *p; p++) {
        if (*p == '\n') {
            buf_add(b, "\r\n", 2);
            col = 0;
            continue;
        }
        if (*p == '\r')
            continue;
        if (col == COLS) {
            buf_add(b, "\r\n", 2);
            col = 0;
        }
        buf_add(b, p, 1);
        col++;
    }
}

static void buf_printf(struct buf *b, const char *fmt, ...)
{
    char tmp[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    buf_text(b, tmp);
}

/* ------------------------------------------------------------------ channels */

enum stage { ST_NONE, ST_USER, ST_DOMAIN, ST_PASSWORD, ST_SHELL };

struct channel {
    int used;
    char name[16];
    char guid[40];
    int is_cmd;
    enum stage stage;
    char user[64], domain[64];
    char line[MAXLINE];
    int len;
    char cwd[MAXLINE];
    char prompt[128];
    int errorlevel;
    char vars[NVARS][2][128];
    char hist[HIST]; /* the channel's screen: what a redraw shows (last 24 lines) */
    size_t hist_len;
};

enum view { V_SAC, V_SWITCH, V_CHANNEL };

static struct channel chans[MAXCH];
static enum view view = V_SAC;
static int focus; /* channel shown (switch screen or view) */
static int next_cmd_number = 1;
static int cmd_available;
static int paging = 1;
static int crashed;
static char sac_line[SAC_MAXINPUT + 1];
static int sac_len;
static struct buf sac_queue; /* SAC output produced while another channel is on screen */

/* Pager: long output shown a page at a time, for the SAC channel (`p` on) or a cmd `| more`. */
static struct {
    int active;
    int owner; /* channel index: 0 = SAC */
    struct buf text;
    size_t off;
    const char *prompt;
} pager;

static void sac_show_prompt(void);
static void cmd_show_prompt(struct channel *c);

static void chan_record(struct channel *c, const char *data, size_t len)
{
    if (len >= HIST) {
        data += len - HIST / 2;
        len = HIST / 2;
    }
    if (c->hist_len + len > HIST) {
        size_t drop = c->hist_len + len - HIST / 2;
        if (drop > c->hist_len)
            drop = c->hist_len;
        memmove(c->hist, c->hist + drop, c->hist_len - drop);
        c->hist_len -= drop;
    }
    memcpy(c->hist + c->hist_len, data, len);
    c->hist_len += len;
}

/* Output of channel `idx`: on the wire if it is on screen, always in its screen record. */
static void chan_out_raw(int idx, const char *data, size_t len)
{
    if (idx == 0) {
        if (view == V_SAC)
            out_raw(data, len);
        else
            buf_add(&sac_queue, data, len);
        return;
    }
    chan_record(&chans[idx], data, len);
    if (view == V_CHANNEL && focus == idx)
        out_raw(data, len);
}

static void chan_out(int idx, const char *s) { chan_out_raw(idx, s, strlen(s)); }

static void chan_text(int idx, const char *text)
{
    struct buf b = {0};
    buf_text(&b, text);
    if (b.len)
        chan_out_raw(idx, b.data, b.len);
    free(b.data);
}

/* Show `b` (CRLF text) on channel idx, paged if asked; `done` runs when all was shown. */
static void (*pager_done)(int idx);

static void pager_next(void)
{
    const char *p = pager.text.data + pager.off;
    const char *end = pager.text.data + pager.text.len;
    int lines = 0;
    while (p < end && lines < PAGE) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        p = nl ? nl + 1 : end;
        lines++;
    }
    chan_out_raw(pager.owner, pager.text.data + pager.off, (size_t)(p - (pager.text.data + pager.off)));
    pager.off = (size_t)(p - pager.text.data);
    if (pager.off < pager.text.len) {
        chan_out(pager.owner, pager.prompt);
        return;
    }
    pager.active = 0;
    free(pager.text.data);
    pager.text = (struct buf){0};
    if (pager_done)
        pager_done(pager.owner);
}

static void show_output(int idx, struct buf *b, int paged, const char *prompt, void (*done)(int))
{
    pager.owner = idx;
    pager.text = *b;
    *b = (struct buf){0};
    pager.off = 0;
    pager.prompt = prompt;
    pager.active = paged;
    pager_done = done;
    if (!paged) {
        chan_out_raw(idx, pager.text.data ? pager.text.data : "", pager.text.len);
        free(pager.text.data);
        pager.text = (struct buf){0};
        if (done)
            done(idx);
        return;
    }
    pager_next();
}

static void pager_key(unsigned char ch)
{
    /* erase the prompt line, then the next page (q ends it) */
    char erase[COLS + 4];
    size_t n = strlen(pager.prompt);
    erase[0] = '\r';
    memset(erase + 1, ' ', n);
    erase[n + 1] = '\r';
    chan_out_raw(pager.owner, erase, n + 2);
    if (ch == 'q' || ch == 'Q') {
        pager.off = pager.text.len;
        chan_out(pager.owner, "\r\n");
    }
    pager_next();
}

/* ----------------------------------------------------------- SAC commands */

/* Events wait while SAC is in the middle of an answer (a page prompt): shown after its prompt. */
static char deferred[8][128];
static int ndeferred;
static void sac_event(const char *text);

static void defer_event(const char *text)
{
    if (ndeferred < 8)
        snprintf(deferred[ndeferred++], sizeof deferred[0], "%s", text);
}

static void sac_done(int idx)
{
    (void)idx;
    sac_show_prompt();
    int n = ndeferred;
    char evs[8][128];
    memcpy(evs, deferred, sizeof evs);
    ndeferred = 0;
    for (int i = 0; i < n; i++)
        sac_event(evs[i]);
}

static void sac_show_prompt(void)
{
    chan_out(0, "\r\nSAC>");
    if (sac_len)
        chan_out_raw(0, sac_line, (size_t)sac_len);
}

static void sac_event(const char *text)
{
    if (pager.active && pager.owner == 0) {
        defer_event(text);
        return;
    }
    /* An event interrupts the prompt line, then the prompt (and what was typed) comes back. */
    struct buf b = {0};
    buf_add(&b, "\r\n", 2);
    buf_text(&b, text);
    chan_out_raw(0, b.data, b.len);
    free(b.data);
    sac_show_prompt();
}

static void machine_info_xml(struct buf *b)
{
    buf_printf(b,
               "<machine-info>\n<name>%s</name>\n<guid>5ac5111a-5e4c-4f00-8000-00000000cafe</guid>\n"
               "<processor-architecture>AMD64</processor-architecture>\n<os-version>10.0</os-version>\n"
               "<os-build-number>17763</os-build-number>\n<os-product>SAC simulator (sercon)</os-product>\n"
               "<os-service-pack>None</os-service-pack>\n</machine-info>\n",
               cfg_name);
}

static int find_channel(const char *arg, int by_name)
{
    if (by_name) {
        for (int i = 0; i < MAXCH; i++)
            if (chans[i].used && !strcasecmp(chans[i].name, arg))
                return i;
        return -1;
    }
    char *end;
    long n = strtol(arg, &end, 10);
    if (*arg == 0 || *end != 0 || n < 0 || n >= MAXCH || !chans[n].used)
        return -1;
    return (int)n;
}

static void show_switch_screen(int idx);
static void close_channel(int idx, int defer);

static void cmd_ch(const char *args, struct buf *b)
{
    char opt[16] = "", arg[64] = "";
    sscanf(args, "%15s %63s", opt, arg);
    if (!opt[0]) {
        buf_text(b, "Channel List\n\n(Use \"ch -?\" for information on using channels)\n\n# Status  Channel Name\n");
        for (int i = 0; i < MAXCH; i++)
            if (chans[i].used)
                buf_printf(b, "%d (AV)    %s\n", i, chans[i].name);
        return;
    }
    if (!strcmp(opt, "-?")) {
        buf_text(b, "ch                   List all channels.\n"
                    "ch -?                Display this help text.\n"
                    "ch -si <#>           Switch to a channel by its number.\n"
                    "ch -sn <name>        Switch to a channel by its name.\n"
                    "ch -ci <#>           Close a channel by its number.\n"
                    "ch -cn <name>        Close a channel by its name.\n"
                    "Press <esc><tab> to select a channel.\n"
                    "Press <esc><tab>0 to return to the SAC channel.\n");
        return;
    }
    int by_name = !strcasecmp(opt, "-sn") || !strcasecmp(opt, "-cn");
    int is_switch = !strcasecmp(opt, "-si") || !strcasecmp(opt, "-sn");
    int is_close = !strcasecmp(opt, "-ci") || !strcasecmp(opt, "-cn");
    if (!is_switch && !is_close) {
        buf_text(b, "Error: Invalid parameters.  Use \"ch -?\" for channel help.\n");
        return;
    }
    if (!arg[0]) {
        buf_text(b, by_name ? "Error: You must specify a channel name.\n" : "Error: You must specify a channel index.\n");
        return;
    }
    int idx = find_channel(arg, by_name);
    if (idx < 0) {
        buf_text(b, by_name ? "Error: There is no channel present with the specified name.\n"
                            : "Error: There is no channel present at the specified index.\n");
        return;
    }
    if (is_close) {
        if (idx == 0) {
            buf_text(b, "Error: The SAC channel cannot be closed.\n");
            return;
        }
        buf_printf(b, "Channel %s has been closed.\n", chans[idx].name);
        close_channel(idx, 1);
        return;
    }
    if (idx == 0)
        return; /* already on SAC */
    show_switch_screen(idx);
}

static void cmd_tlist(struct buf *b)
{
    buf_text(b, "memory: 0 kb  uptime: 0 0:00:00.000\n\n PageFile: \\??\\C:\\pagefile.sys\n\n");
    DIR *d = opendir("/proc");
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        char path[300], comm[64] = "?";
        snprintf(path, sizeof path, "/proc/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (f) {
            if (fgets(comm, sizeof comm, f))
                comm[strcspn(comm, "\n")] = 0;
            fclose(f);
        }
        buf_printf(b, "%6s %-24s\n", e->d_name, comm);
    }
    closedir(d);
}

static void cmd_dmesg(struct buf *b)
{
    int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK);
    if (fd < 0) {
        buf_text(b, "Error: the kernel log cannot be read.\n");
        return;
    }
    char rec[1024];
    char lines[20][128];
    int count = 0;
    ssize_t n;
    while ((n = read(fd, rec, sizeof rec - 1)) > 0 || (n < 0 && errno == EPIPE)) {
        if (n <= 0)
            continue;
        rec[n] = 0;
        char *msg = strchr(rec, ';');
        msg = msg ? msg + 1 : rec;
        msg[strcspn(msg, "\n")] = 0;
        snprintf(lines[count % 20], sizeof lines[0], "%.78s", msg);
        count++;
    }
    close(fd);
    int first = count > 20 ? count - 20 : 0;
    for (int i = first; i < count; i++)
        buf_printf(b, "%s\n", lines[i % 20]);
}

static void bugcheck(unsigned code, const char *name, unsigned long long p1);

static void sac_execute(char *line)
{
    while (*line == ' ')
        line++;
    size_t n = strlen(line);
    while (n && line[n - 1] == ' ')
        line[--n] = 0;
    char word[32] = "";
    sscanf(line, "%31s", word);
    const char *args = line + strlen(word);
    while (*args == ' ')
        args++;
    struct buf b = {0};

    if (!word[0]) {
        sac_show_prompt();
        return;
    }
    if (!strcmp(word, "?") || !strcasecmp(word, "help")) {
        buf_text(&b, "ch                   Channel management commands.  Use ch -? for more help.\n"
                     "cmd                  Create a Command Prompt channel.\n"
                     "crashdump            Crash the system. You must have crash dump enabled.\n"
                     "d                    Dump the current kernel log.\n"
                     "? or help            Display this list.\n"
                     "i                    List all IP network numbers and their IP addresses.\n"
                     "id                   Display the computer identification information.\n"
                     "k <pid>              Kill the given process.\n"
                     "lock                 Lock access to Command Prompt channels.\n"
                     "p                    Toggle paging the display.\n"
                     "restart              Restart the system immediately.\n"
                     "s                    Display the current time and date (24 hour clock used).\n"
                     "shutdown             Shutdown the system immediately.\n"
                     "t                    Tlist.\n");
    } else if (!strcasecmp(word, "ch")) {
        cmd_ch(args, &b);
        if (view != V_SAC) { /* switched to a channel: SAC's prompt comes back on return */
            free(b.data);
            return;
        }
    } else if (!strcasecmp(word, "cmd")) {
        if (!cmd_available) {
            buf_text(&b, "Unable to launch a Command Prompt.  The service responsible for launching "
                         "Command Prompt channels has not yet registered.  This may be because the service "
                         "is not yet started, is disabled by the administrator, is malfunctioning or is "
                         "unresponsive.\n");
        } else {
            int idx = -1;
            for (int i = 1; i < MAXCH; i++)
                if (!chans[i].used) {
                    idx = i;
                    break;
                }
            if (idx < 0) {
                buf_text(&b, "Error: The maximum number of channels has been reached.\n");
            } else {
                struct channel *c = &chans[idx];
                memset(c, 0, sizeof *c);
                c->used = 1;
                c->is_cmd = 1;
                snprintf(c->name, sizeof c->name, "Cmd%04d", next_cmd_number++);
                snprintf(c->guid, sizeof c->guid, "5ac5111a-%04x-4c00-8000-%012x", idx, (unsigned)time(NULL));
                snprintf(c->cwd, sizeof c->cwd, "C:\\Windows\\system32");
                snprintf(c->prompt, sizeof c->prompt, "$P$G");
                buf_text(&b, "The Command Prompt session was successfully launched.\n");
                chan_out_raw(0, b.data, b.len);
                free(b.data);
                sac_show_prompt();
                char ev[160];
                snprintf(ev, sizeof ev,
                         "EVENT:   A new channel has been created.  Use \"ch -?\" for channel help.\nChannel: %s",
                         c->name);
                sac_event(ev);
                return;
            }
        }
    } else if (!strcasecmp(word, "d")) {
        cmd_dmesg(&b);
    } else if (!strcasecmp(word, "i")) {
        if (*args)
            buf_text(&b, "Error: The SAC simulator cannot change IP addresses.\n");
        else
            buf_text(&b, "Net: 1, Ip=169.254.0.2  Subnet=255.255.0.0  Gateway=0.0.0.0\n"
                         "(SAC simulator (sercon): the guest has no network adapter)\n");
    } else if (!strcasecmp(word, "id")) {
        buf_printf(&b,
                   "Computer Name: %s\nComputer GUID: 5ac5111a-5e4c-4f00-8000-00000000cafe\n"
                   "Processor Architecture: x64\nBuild Number: 17763\n"
                   "Product: SAC simulator (sercon), modelled on Windows Server 2019\n"
                   "Applied Service Pack: None\nVersion Number: 10.0\nBuild Type: Multiprocessor Free\n"
                   "Product Type: Server\nSuite Type: TerminalServer\n",
                   cfg_name);
    } else if (!strcasecmp(word, "k")) {
        char *end;
        long pid = strtol(args, &end, 10);
        if (!*args || *end || pid <= 0)
            buf_text(&b, "Error: You must specify a valid process ID.\n");
        else if (kill((pid_t)pid, SIGKILL) != 0)
            buf_text(&b, "That process does not exist.\n");
        else
            buf_text(&b, "Process killed.\n");
    } else if (!strcasecmp(word, "lock")) {
        for (int i = 1; i < MAXCH; i++)
            if (chans[i].used && chans[i].is_cmd && chans[i].stage != ST_NONE) {
                chans[i].stage = ST_NONE;
                chans[i].len = 0;
                chans[i].hist_len = 0;
            }
        buf_text(&b, "All Command Prompt channels have been locked.\n");
    } else if (!strcasecmp(word, "p")) {
        paging = !paging;
        buf_text(&b, paging ? "Paging is now ON.\n" : "Paging is now OFF.\n");
    } else if (!strcasecmp(word, "s")) {
        time_t now = time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        buf_printf(&b, "Date: %02d/%02d/%04d  Time (GMT): %02d:%02d:%02d\n", tm.tm_mon + 1, tm.tm_mday,
                   tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    } else if (!strcasecmp(word, "t")) {
        cmd_tlist(&b);
    } else if (!strcasecmp(word, "restart")) {
        sync();
        reboot(RB_AUTOBOOT);
        return;
    } else if (!strcasecmp(word, "shutdown")) {
        sync();
        reboot(RB_POWER_OFF);
        return;
    } else if (!strcasecmp(word, "crashdump")) {
        bugcheck(0xE2, "MANUALLY_INITIATED_CRASH", 0);
        return;
    } else {
        buf_text(&b, "Unrecognized command.  Try the 'help' command for more details.\n");
    }
    show_output(0, &b, paging, "Press any key to continue...", sac_done);
    free(b.data);
}

/* ------------------------------------------------------------ channel switching */

static void clear_screen(void) { out("\x1b[2J\x1b[H"); }

static void show_switch_screen(int idx)
{
    struct buf b = {0};
    struct channel *c = &chans[idx];
    const char *desc = idx == 0 ? "Special Administration Console" : "Command Prompt";
    const char *type = idx == 0 ? "Raw" : "VT-UTF8";
    const char *app = idx == 0 ? SAC_APP_GUID : CMD_APP_GUID;
    view = V_SWITCH;
    focus = idx;
    buf_printf(&b, "<?xml version=\"1.0\"?>\n<channel-switch>\n<name>%s</name>\n<description>%s</description>\n"
                   "<type>%s</type>\n<guid>%s</guid>\n<application-type>%s</application-type>\n</channel-switch>\n",
               c->name, desc, type, c->guid, app);
    out_raw(b.data, b.len);
    free(b.data);
    b = (struct buf){0};
    clear_screen();
    buf_printf(&b,
               "Name:                  %s\nDescription:           %s\nType:                  %s\n"
               "Channel GUID:          %s\nApplication Type GUID: %s\n\n"
               "Press <esc><tab> for next channel.\nPress <esc><tab>0 to return to the SAC channel.\n"
               "Use any other key to view this channel.\n",
               c->name, desc, type, c->guid, app);
    out_raw(b.data, b.len);
    free(b.data);
}

static void go_sac(void)
{
    view = V_SAC;
    focus = 0;
    clear_screen();
    if (sac_queue.len) {
        out_raw(sac_queue.data, sac_queue.len);
        free(sac_queue.data);
        sac_queue = (struct buf){0};
    }
    sac_show_prompt();
}

static void view_channel(int idx)
{
    struct channel *c = &chans[idx];
    view = V_CHANNEL;
    focus = idx;
    clear_screen();
    /* 80x24 with no scrollback: the redraw shows the last 24 lines of the channel's screen. */
    size_t start = c->hist_len;
    int lines = 0;
    while (start > 0) {
        if (c->hist[start - 1] == '\n' && ++lines >= ROWS)
            break;
        start--;
    }
    out_raw(c->hist + start, c->hist_len - start);
    if (c->is_cmd && c->stage == ST_NONE) {
        c->stage = ST_USER;
        c->len = 0;
        chan_out(idx, "Please enter login credentials.\r\nUsername: ");
    }
}

static void esc_tab(void)
{
    int start = view == V_SAC ? 0 : focus;
    for (int step = 1; step <= MAXCH; step++) {
        int i = (start + step) % MAXCH;
        if (!chans[i].used)
            continue;
        show_switch_screen(i);
        return;
    }
}

static void close_channel(int idx, int defer)
{
    char ev[96];
    snprintf(ev, sizeof ev, "EVENT:   A channel has been closed.\nChannel: %s", chans[idx].name);
    if (defer) {
        chans[idx].used = 0;
        defer_event(ev);
        return;
    }
    chans[idx].used = 0;
    if (pager.active && pager.owner == idx)
        pager.active = 0;
    if (view != V_SAC && focus == idx) {
        go_sac();
    }
    sac_event(ev);
}

/* ------------------------------------------------------------- the cmd channel */

static const char *getvar(struct channel *c, const char *name)
{
    static char tmp[MAXLINE];
    if (!strcasecmp(name, "ERRORLEVEL")) {
        snprintf(tmp, sizeof tmp, "%d", c->errorlevel);
        return tmp;
    }
    if (!strcasecmp(name, "CD"))
        return c->cwd;
    if (!strcasecmp(name, "COMPUTERNAME") || !strcasecmp(name, "USERDOMAIN"))
        return cfg_name;
    if (!strcasecmp(name, "USERNAME"))
        return c->user;
    if (!strcasecmp(name, "OS"))
        return "Windows_NT";
    for (int i = 0; i < NVARS; i++)
        if (c->vars[i][0][0] && !strcasecmp(c->vars[i][0], name))
            return c->vars[i][1];
    return NULL;
}

static void expand(struct channel *c, const char *in, char *outp, size_t cap)
{
    size_t o = 0;
    while (*in && o + 1 < cap) {
        if (*in == '%') {
            const char *end = strchr(in + 1, '%');
            if (end && end > in + 1) {
                char name[64];
                snprintf(name, sizeof name, "%.*s", (int)(end - in - 1), in + 1);
                const char *v = getvar(c, name);
                if (v) {
                    o += (size_t)snprintf(outp + o, cap - o, "%s", v);
                    if (o >= cap)
                        o = cap - 1;
                    in = end + 1;
                    continue;
                }
            }
        }
        outp[o++] = *in++;
    }
    outp[o] = 0;
}

static void cmd_show_prompt(struct channel *c)
{
    char p[256];
    size_t o = 0;
    for (const char *f = c->prompt; *f && o + 1 < sizeof p; f++) {
        if (*f == '$' && f[1]) {
            f++;
            const char *s = "";
            char one[2] = {0, 0};
            switch (toupper((unsigned char)*f)) {
            case 'P': s = c->cwd; break;
            case 'G': s = ">"; break;
            case 'L': s = "<"; break;
            case 'N': one[0] = c->cwd[0]; s = one; break;
            case '_': s = "\r\n"; break;
            case '$': s = "$"; break;
            default: break;
            }
            o += (size_t)snprintf(p + o, sizeof p - o, "%s", s);
            if (o >= sizeof p)
                o = sizeof p - 1;
        } else {
            p[o++] = *f;
        }
    }
    p[o] = 0;
    chan_out(c - chans, p);
}

static void cmd_done(int idx)
{
    chan_out(idx, "\r\n");
    cmd_show_prompt(&chans[idx]);
}

static void cmd_tasklist(struct buf *b)
{
    buf_text(b, "\nImage Name                     PID Session Name        Session#    Mem Usage\n"
                "========================= ======== ================ =========== ============\n");
    DIR *d = opendir("/proc");
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        char path[300], comm[64] = "?", rss[32] = "0";
        snprintf(path, sizeof path, "/proc/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (f) {
            if (fgets(comm, sizeof comm, f))
                comm[strcspn(comm, "\n")] = 0;
            fclose(f);
        }
        snprintf(path, sizeof path, "/proc/%s/statm", e->d_name);
        f = fopen(path, "r");
        if (f) {
            long pages_total = 0, resident = 0;
            if (fscanf(f, "%ld %ld", &pages_total, &resident) == 2)
                snprintf(rss, sizeof rss, "%ld K", resident * 4);
            fclose(f);
        }
        char image[40];
        snprintf(image, sizeof image, "%.20s.exe", comm);
        buf_printf(b, "%-25.25s %8s Services                   0 %12s\n", image, e->d_name, rss);
    }
    closedir(d);
}

static void cmd_systeminfo(struct buf *b)
{
    buf_printf(b,
               "\nHost Name:                 %s\n"
               "OS Name:                   SAC simulator (sercon)\n"
               "OS Version:                10.0.17763 N/A Build 17763\n"
               "OS Manufacturer:           sercon\n"
               "OS Configuration:          Standalone Server\n"
               "OS Build Type:             Multiprocessor Free\n"
               "Registered Owner:          N/A\n"
               "Registered Organization:   N/A\n"
               "Product ID:                N/A\n"
               "Original Install Date:     N/A\n"
               "System Boot Time:          N/A\n"
               "System Manufacturer:       QEMU\n"
               "System Model:              Standard PC (i440FX + PIIX, 1996)\n"
               "System Type:               x64-based PC\n"
               "Processor(s):              1 Processor(s) Installed.\n"
               "                           [01]: QEMU Virtual CPU\n"
               "BIOS Version:              SeaBIOS\n"
               "Windows Directory:         C:\\Windows\n"
               "System Directory:          C:\\Windows\\system32\n"
               "Boot Device:               \\Device\\HarddiskVolume1\n"
               "System Locale:             en-us;English (United States)\n"
               "Input Locale:              en-us;English (United States)\n"
               "Time Zone:                 (UTC) Coordinated Universal Time\n"
               "Total Physical Memory:     N/A\n"
               "Available Physical Memory: N/A\n"
               "Domain:                    WORKGROUP\n"
               "Logon Server:              \\\\%s\n"
               "Hotfix(s):                 N/A\n"
               "Network Card(s):           N/A\n"
               "Hyper-V Requirements:      N/A\n",
               cfg_name, cfg_name);
}

static void cmd_cd(struct channel *c, const char *arg, struct buf *b)
{
    if (!*arg) {
        buf_printf(b, "%s\n", c->cwd);
        return;
    }
    char path[MAXLINE];
    if (isalpha((unsigned char)arg[0]) && arg[1] == ':') {
        snprintf(path, sizeof path, "%s", arg);
    } else if (arg[0] == '\\') {
        snprintf(path, sizeof path, "%c:%s", c->cwd[0], arg);
    } else if (!strcmp(arg, "..")) {
        snprintf(path, sizeof path, "%s", c->cwd);
        char *slash = strrchr(path, '\\');
        if (slash && slash > path + 2)
            *slash = 0;
        else if (slash)
            slash[1] = 0;
    } else {
        size_t n = strlen(c->cwd);
        snprintf(path, sizeof path, "%.120s%s%.120s", c->cwd, c->cwd[n - 1] == '\\' ? "" : "\\", arg);
    }
    size_t n = strlen(path);
    if (n > 3 && path[n - 1] == '\\')
        path[n - 1] = 0;
    snprintf(c->cwd, sizeof c->cwd, "%s", path);
}

static void cmd_set(struct channel *c, const char *arg, struct buf *b)
{
    const char *eq = strchr(arg, '=');
    if (!*arg || !eq) {
        buf_printf(b, "COMPUTERNAME=%s\nOS=Windows_NT\nUSERDOMAIN=%s\nUSERNAME=%s\n", cfg_name, cfg_name, c->user);
        for (int i = 0; i < NVARS; i++)
            if (c->vars[i][0][0] && (!*arg || !strncasecmp(c->vars[i][0], arg, strlen(arg))))
                buf_printf(b, "%s=%s\n", c->vars[i][0], c->vars[i][1]);
        return;
    }
    char name[128];
    snprintf(name, sizeof name, "%.*s", (int)(eq - arg), arg);
    int slot = -1;
    for (int i = 0; i < NVARS; i++)
        if (c->vars[i][0][0] && !strcasecmp(c->vars[i][0], name))
            slot = i;
    for (int i = 0; slot < 0 && i < NVARS; i++)
        if (!c->vars[i][0][0])
            slot = i;
    if (slot >= 0) {
        snprintf(c->vars[slot][0], sizeof c->vars[slot][0], "%s", name);
        snprintf(c->vars[slot][1], sizeof c->vars[slot][1], "%s", eq + 1);
        if (!eq[1])
            c->vars[slot][0][0] = 0;
    }
}

static void cmd_execute(int idx)
{
    struct channel *c = &chans[idx];
    char line[MAXLINE * 2];
    expand(c, c->line, line, sizeof line);
    c->len = 0;
    chan_out(idx, "\r\n");

    /* `... | more`: the output goes through the pager */
    int paged = 0;
    char *bar = strrchr(line, '|');
    if (bar) {
        char *w = bar + 1;
        while (*w == ' ')
            w++;
        if (!strncasecmp(w, "more", 4) && (w[4] == 0 || w[4] == ' ')) {
            paged = 1;
            *bar = 0;
        }
    }
    char *cmd = line;
    while (*cmd == ' ' || *cmd == '@')
        cmd++;
    size_t n = strlen(cmd);
    while (n && cmd[n - 1] == ' ')
        cmd[--n] = 0;
    if (!*cmd) {
        cmd_show_prompt(c);
        return;
    }
    char word[64] = "";
    size_t wl = strcspn(cmd, " .");
    if (!strncasecmp(cmd, "echo", 4) && (cmd[4] == '.' || cmd[4] == ' ' || cmd[4] == 0))
        wl = 4;
    snprintf(word, sizeof word, "%.*s", (int)wl, cmd);
    const char *args = cmd + wl;
    if (*args == ' ')
        args++;
    struct buf b = {0};
    c->errorlevel = 0;

    if (!strcasecmp(word, "echo")) {
        if (cmd[4] == '.')
            buf_text(&b, "\n");
        else if (!*args)
            buf_text(&b, "ECHO is on.\n");
        else
            buf_printf(&b, "%s\n", args);
    } else if (!strcasecmp(word, "ver")) {
        buf_text(&b, "\nSAC simulator (sercon) cmd [Version 10.0.17763]\n");
    } else if (!strcasecmp(word, "hostname")) {
        buf_printf(&b, "%s\n", cfg_name);
    } else if (!strcasecmp(word, "whoami")) {
        char who[160];
        snprintf(who, sizeof who, "%s\\%s", cfg_name, c->user);
        for (char *p = who; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        buf_printf(&b, "%s\n", who);
    } else if (!strcasecmp(word, "cd") || !strcasecmp(word, "chdir")) {
        cmd_cd(c, args, &b);
    } else if (!strcasecmp(word, "cls")) {
        c->hist_len = 0;
        if (view == V_CHANNEL && focus == idx)
            clear_screen();
        cmd_show_prompt(c);
        return;
    } else if (!strcasecmp(word, "set")) {
        cmd_set(c, args, &b);
    } else if (!strcasecmp(word, "prompt")) {
        snprintf(c->prompt, sizeof c->prompt, "%s", *args ? args : "$P$G");
        cmd_show_prompt(c);
        return;
    } else if (!strcasecmp(word, "tasklist")) {
        cmd_tasklist(&b);
    } else if (!strcasecmp(word, "systeminfo")) {
        cmd_systeminfo(&b);
    } else if (!strcasecmp(word, "exit")) {
        close_channel(idx, 0);
        return;
    } else {
        buf_printf(&b, "'%s' is not recognized as an internal or external command,\noperable program or batch file.\n",
                   word);
        c->errorlevel = 9009;
    }
    if (paged) /* %ERRORLEVEL% after a pipeline is that of its last command, `more` */
        c->errorlevel = 0;
    show_output(idx, &b, paged, "-- More  --", cmd_done);
    free(b.data);
}

static void login_check(int idx)
{
    struct channel *c = &chans[idx];
    chan_out(idx, "\r\n\r\nAttempting to authenticate...\r\n");
    int domain_ok = !c->domain[0] || !strcmp(c->domain, ".") || !strcasecmp(c->domain, cfg_name);
    if (!strcasecmp(c->user, cfg_user) && domain_ok && !strcmp(c->line, cfg_password)) {
        c->stage = ST_SHELL;
        c->len = 0;
        c->hist_len = 0;
        if (view == V_CHANNEL && focus == idx)
            clear_screen();
        chan_text(idx, "SAC simulator (sercon) cmd [Version 10.0.17763]\nThis is a simulator, not Windows.\n\n");
        cmd_show_prompt(c);
        return;
    }
    c->stage = ST_USER;
    c->len = 0;
    chan_out(idx, "Unable to authenticate: The user name or password is incorrect.\r\n\r\n"
                  "Please enter login credentials.\r\nUsername: ");
}

static void chan_key(int idx, unsigned char ch)
{
    struct channel *c = &chans[idx];
    if (pager.active && pager.owner == idx) {
        pager_key(ch);
        return;
    }
    if (ch == '\n')
        return;
    if (ch == '\r') {
        c->line[c->len] = 0;
        switch (c->stage) {
        case ST_USER:
            copy_str(c->user, sizeof c->user, c->line);
            c->len = 0;
            c->stage = ST_DOMAIN;
            chan_out(idx, "\r\nDomain  : ");
            return;
        case ST_DOMAIN:
            copy_str(c->domain, sizeof c->domain, c->line);
            c->len = 0;
            c->stage = ST_PASSWORD;
            chan_out(idx, "\r\nPassword: ");
            return;
        case ST_PASSWORD:
            login_check(idx);
            return;
        case ST_SHELL:
            cmd_execute(idx);
            return;
        default:
            return;
        }
    }
    if (ch == 0x03 && c->stage == ST_SHELL) {
        c->len = 0;
        chan_out(idx, "^C\r\n");
        cmd_show_prompt(c);
        return;
    }
    if (ch == 0x08 || ch == 0x7f) {
        if (c->len > 0) {
            c->len--;
            if (c->stage != ST_PASSWORD)
                chan_out(idx, "\b \b");
        }
        return;
    }
    if (ch < 0x20 || ch > 0x7e || c->len >= MAXLINE - 1) {
        bel();
        return;
    }
    c->line[c->len++] = (char)ch;
    if (c->stage != ST_PASSWORD) {
        char s[2] = {(char)ch, 0};
        chan_out(idx, s);
    }
}

/* ------------------------------------------------------------------ SAC input */

static void sac_key(unsigned char ch)
{
    if (pager.active && pager.owner == 0) {
        pager_key(ch);
        return;
    }
    if (ch == '\r' || ch == 0x03) { /* Ctrl-C acts as Enter */
        sac_line[sac_len] = 0;
        sac_len = 0;
        out("\r\n");
        char line[SAC_MAXINPUT + 1];
        memcpy(line, sac_line, sizeof line);
        sac_execute(line);
        return;
    }
    if (ch == '\n')
        return;
    if (ch == 0x08 || ch == 0x7f) {
        if (sac_len > 0) {
            sac_len--;
            out("\b \b");
        }
        return;
    }
    if (ch < 0x20 || ch > 0x7e || sac_len >= SAC_MAXINPUT) { /* Tab and other controls ring BEL */
        bel();
        return;
    }
    sac_line[sac_len++] = (char)ch;
    char s[2] = {(char)ch, 0};
    out(s);
}

static int esc_state; /* 0 none, 1 after ESC, 2 inside a CSI sequence */

static void on_byte(unsigned char ch)
{
    if (crashed)
        return;
    if (esc_state == 2) {
        if (ch >= 0x40 && ch <= 0x7e)
            esc_state = 0;
        return;
    }
    if (esc_state == 1) {
        esc_state = 0;
        if (ch == '\t') {
            esc_tab();
            return;
        }
        if (ch == '[') { /* VT100 cursor keys: rejected at SAC>, ignored in channels */
            esc_state = 2;
            if (view == V_SAC)
                bel();
            return;
        }
        /* a lone Esc: fall through with the next key */
    }
    if (ch == 0x1b) {
        esc_state = 1;
        return;
    }
    switch (view) {
    case V_SWITCH:
        if (ch == '0')
            go_sac();
        else if (focus == 0)
            go_sac();
        else
            view_channel(focus);
        return;
    case V_CHANNEL:
        chan_key(focus, ch);
        return;
    case V_SAC:
        sac_key(ch);
        return;
    }
}

/* -------------------------------------------------------------------- bugcheck */

static void bugcheck(unsigned code, const char *name, unsigned long long p1)
{
    struct buf b = {0};
    crashed = 1;
    buf_text(&b, "\n<?xml version=\"1.0\"?>\n<BP>\n<INSTANCE CLASSNAME=\"BLUESCREEN\">\n");
    buf_printf(&b, "<PROPERTY NAME=\"STOPCODE\" TYPE=\"string\"><VALUE>\"0x%X\"</VALUE></PROPERTY>", code);
    machine_info_xml(&b);
    buf_text(&b, "</INSTANCE>\n</BP>\n!SAC>\n");
    buf_printf(&b,
               "\nYour PC ran into a problem and needs to restart. We're just collecting some\n"
               "error info, and then we'll restart for you.\n\n"
               "If you call a support person, give them this info:\nStop code: %s\n\n"
               "*** STOP: 0x%08X (0x%08llX,0x00000000,0x00000000,0x00000000)\n%s\n\n",
               name, code, p1, name);
    out_raw(b.data, b.len);
    free(b.data);
    out("Collecting data for crash dump ...\r\nInitializing disk for crash dump ...\r\n"
        "Beginning dump of physical memory.\r\nDumping physical memory to disk:  100 \r\n"
        "Physical memory dump complete.\r\n");
    sleep(1);
    if (cfg_autoreboot) {
        out("Restarting ...\r\n");
        tcdrain(1);
        sync();
        reboot(RB_AUTOBOOT);
    }
    out("The system has halted.\r\n");
}

static void check_kmsg(int fd)
{
    char rec[2048];
    ssize_t n;
    while ((n = read(fd, rec, sizeof rec - 1)) > 0 || (n < 0 && errno == EPIPE)) {
        if (n <= 0)
            continue;
        rec[n] = 0;
        /* The guest kernel's report of QEMU's inject-nmi: "Uhhuh. NMI received for unknown reason ..." */
        if (!crashed && (strstr(rec, "NMI received for unknown reason") || strstr(rec, "NMI: Not continuing")))
            bugcheck(0x80, "NMI_HARDWARE_FAILURE", 0x4F4454ULL);
    }
}

/* ------------------------------------------------------------------------ main */

static void raw_mode(void)
{
    struct termios t;
    if (tcgetattr(0, &t) != 0)
        return;
    cfmakeraw(&t);
    t.c_iflag &= ~(unsigned)(IGNBRK | BRKINT);
    t.c_cflag |= CLOCAL | CREAD;
    cfsetispeed(&t, B115200);
    cfsetospeed(&t, B115200);
    tcsetattr(0, TCSANOW, &t);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    read_settings();
    raw_mode();
    chans[0].used = 1;
    snprintf(chans[0].name, sizeof chans[0].name, "SAC");
    snprintf(chans[0].guid, sizeof chans[0].guid, "5ac5111a-0000-4c00-8000-000000000000");

    int kfd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK);
    if (kfd >= 0)
        lseek(kfd, 0, SEEK_END);

    struct buf b = {0};
    buf_text(&b, "\n<?xml version=\"1.0\"?>\n");
    machine_info_xml(&b);
    buf_text(&b, "\nComputer is booting, SAC started and initialized.\n\n"
                 "Use the \"ch -?\" command for information about using channels.\n"
                 "Use the \"?\" command for general help.\n\n");
    out_raw(b.data, b.len);
    free(b.data);
    sac_show_prompt();

    struct timespec started;
    clock_gettime(CLOCK_MONOTONIC, &started);
    for (;;) {
        int timeout = -1;
        if (!cmd_available) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            long ms = (long)(started.tv_sec + cfg_cmd_delay - now.tv_sec) * 1000 +
                      (started.tv_nsec - now.tv_nsec) / 1000000;
            if (ms <= 0) {
                cmd_available = 1;
                if (!crashed)
                    sac_event("EVENT: The CMD command is now available.");
                continue;
            }
            timeout = (int)ms;
        }
        struct pollfd fds[2] = {{.fd = 0, .events = POLLIN}, {.fd = kfd, .events = POLLIN}};
        int r = poll(fds, kfd >= 0 ? 2 : 1, timeout);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return 1;
        }
        if (kfd >= 0 && (fds[1].revents & POLLIN))
            check_kmsg(kfd);
        if (fds[0].revents & POLLIN) {
            unsigned char in[256];
            ssize_t n = read(0, in, sizeof in);
            if (n <= 0) {
                if (n < 0 && (errno == EINTR || errno == EAGAIN))
                    continue;
                return 0;
            }
            for (ssize_t i = 0; i < n; i++)
                on_byte(in[i]);
        } else if (fds[0].revents & (POLLHUP | POLLERR)) {
            return 0;
        }
    }
}
