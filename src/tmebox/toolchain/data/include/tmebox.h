/* tmebox.h: the guest's side of the embedding interface (docs/embedding.md).
 * `tmebox cc` puts this header on the include path of every sandboxed unit. */
#ifndef TMEBOX_H
#define TMEBOX_H

#include <stddef.h>
#include <stdint.h>

/* A host function, provided by the embedder (Runtime.define): declare it with its C
 * prototype.  The mark is the symbol's "protected" visibility, which an undefined
 * function keeps in the object file; the link step gives every such function a stub
 * that makes the runtime call, and records its signature from the debug information.
 * Up to 6 integer/pointer and 8 float/double parameters; no structs by value. */
#define TMEBOX_IMPORT extern __attribute__((visibility("protected")))

/* A function or global the host may reach by name (sb.call, sb.symbol).  Every
 * non-static function is exported already; this keeps it even if nothing calls it. */
#define TMEBOX_EXPORT __attribute__((visibility("default"), used))

#endif
