"""Server-side cache of hot reads, and the bus that carries its invalidations between instances.

:class:`Cache` is a bounded (LRU) map with a TTL per namespace. What goes in it:

=============  ==========================================  ===================================
namespace      what                                        invalidated by
=============  ==========================================  ===================================
``file``       file records by id (GET /file/{id}, the     every write to the file's row
               lookup behind GET /file/{id}/content)       (FileRepository, update_file)
``user``       users by id (the gateway, every request)    UserRepository.update/revoke_tokens
``analytics``  GET /analytics reports                      the TTL only (a few seconds)
=============  ==========================================  ===================================

A write invalidates through an :class:`Invalidator`: the repository opens its transaction
with ``await invalidator.run(db, work, (namespace, key))`` (``work`` is a unit of work, see
:class:`tusserver.catalog.db.Database`). On PostgreSQL the write
also runs ``pg_notify('tusserver_cache', payload)`` inside the same transaction, so the
invalidation is delivered to every listening instance exactly when the change commits (and
not at all when it rolls back). The payload names the namespace and the key (an id), never
a value. After the commit the writing instance drops its own entry at once.

On PostgreSQL each instance listens on the channel with one dedicated asyncpg connection
(:class:`PostgresBus`). A write waits (bounded) until its own notification comes back on that
connection before it returns, so the HTTP response of a write leaves only after PostgreSQL
has dispatched the invalidation: it signals every listening session before the COMMIT
returns, and the other instances' copies normally land at the same moment as ours (on a busy
machine a few milliseconds later; :meth:`PostgresBus.sync` is the exact barrier, and the TTL
the hard bound). While the listener is not connected the cache is emptied and bypassed (an
instance that may miss invalidations must not answer from memory), and it comes back empty
once the listener is again in place.

Reads that race with writes: :meth:`Cache.token` is taken before the database read and
:meth:`Cache.put` refuses the value if the key (or its namespace, or the whole cache) was
invalidated after the token, so a value read before a commit is never stored after the
commit's invalidation.

Nothing here is module-level state: the cache and its bus belong to a Runtime.
"""

from __future__ import annotations

from .bus import CHANNEL, Invalidator, LocalBus, NotifyOnly, PostgresBus
from .collector import CacheCollector
from .store import ANALYTICS, FILES, MISSING, USERS, Cache, Key, Namespace

__all__ = [
    "ANALYTICS",
    "CHANNEL",
    "FILES",
    "MISSING",
    "USERS",
    "Cache",
    "CacheCollector",
    "Invalidator",
    "Key",
    "LocalBus",
    "Namespace",
    "NotifyOnly",
    "PostgresBus",
]
