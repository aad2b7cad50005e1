/* A host that loads the library as C#, Java, Swift and Python FFIs do, with dlopen(RTLD_LOCAL), and loads an
 * engine: the embedded interpreter's extension modules must still find libpython's symbols.
 *
 *   check-dlopen LIBRARY ENGINE        prints STATUS<TAB>MESSAGE
 */
#define _POSIX_C_SOURCE 200809L
#include "audioldm_trt.h"

#include <dlfcn.h>
#include <stdio.h>

typedef audioldm_trt_status (*load_function)(const char *, const audioldm_trt_load_params *, audioldm_trt_engine **,
                                             char **);
typedef void (*free_function)(audioldm_trt_engine *);

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: check-dlopen LIBRARY ENGINE\n");
        return 2;
    }
    void *library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (library == NULL) {
        fprintf(stderr, "%s\n", dlerror());
        return 1;
    }
    /* dlsym returns functions as void *: POSIX allows the conversion, ISO C does not say. */
    load_function load;
    free_function free_engine;
    *(void **)&load = dlsym(library, "audioldm_trt_engine_load");
    *(void **)&free_engine = dlsym(library, "audioldm_trt_engine_free");
    audioldm_trt_engine *engine = NULL;
    char *error = NULL;
    audioldm_trt_load_params params = {.struct_size = sizeof params, .backend = "onnxruntime-cpu", .threads = 1};
    audioldm_trt_status status = load(argv[2], &params, &engine, &error);
    printf("%d\t%s\n", (int)status, error != NULL ? error : "");
    free_engine(engine);
    return 0;
}
