/* Refine prompts from C through libprip_abi.
 *
 *   cc examples/c/refine.c -I plugin-abi/include -L target/release -lprip_abi -o refine
 *   LD_LIBRARY_PATH=target/release ./refine '{"model": "default"}' "a little cat running in the woods"
 */
#include <stdio.h>
#include <string.h>

#include "prip.h"

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s CONFIG_JSON PROMPT...\n", argv[0]);
        return 2;
    }
    if ((prip_abi_version() >> 16) != PRIP_ABI_VERSION_MAJOR) {
        fprintf(stderr, "libprip_abi has ABI %u.%u, this program was built for %u.x\n",
                prip_abi_version() >> 16, prip_abi_version() & 0xffff, PRIP_ABI_VERSION_MAJOR);
        return 1;
    }
    PripHandle handle = 0;
    if (prip_open(argv[1], &handle) != PRIP_STATUS_OK) {
        fprintf(stderr, "open: %s\n", prip_last_error());
        return 1;
    }
    int failed = 0;
    for (int i = 2; i < argc; i++) {
        /* Build {"prompt": "...", "seed": 7}; a real caller would use a JSON library. */
        char request[4096];
        char escaped[2048];
        size_t n = 0;
        for (const char *p = argv[i]; *p && n + 2 < sizeof escaped; p++) {
            if (*p == '"' || *p == '\\') escaped[n++] = '\\';
            escaped[n++] = *p;
        }
        escaped[n] = '\0';
        snprintf(request, sizeof request, "{\"prompt\": \"%s\", \"seed\": 7}", escaped);
        char *out = NULL;
        if (prip_refine(handle, request, &out) == PRIP_STATUS_OK) {
            printf("%s\n", out);
            prip_string_free(out);
        } else {
            fprintf(stderr, "refine: %s\n", prip_last_error());
            failed = 1;
        }
    }
    if (prip_close(handle) != PRIP_STATUS_OK) {
        fprintf(stderr, "close: %s\n", prip_last_error());
        return 1;
    }
    return failed;
}
