"""`fleet db`: the store's schema (PostgreSQL migrations)."""

from __future__ import annotations

import click

from fleet.cli._context import config_option, load, run_async


@click.group()
def db() -> None:
    """The store's schema: apply migrations before starting a new fleet release."""


@db.command()
@config_option
def upgrade() -> None:
    """Bring the store's schema up to this fleet's version (PostgreSQL).

    Run it once per release, before `fleet serve` (which refuses an older
    schema and names this command); safe on several nodes at once. A schema
    newer than this fleet knows is refused untouched. SQLite and Redis
    migrate themselves when opened: for them it only checks the store opens.
    """
    config = load()
    url = config.store_url
    if url.startswith(("postgresql://", "postgres://")):
        from fleet.store.postgres import upgrade_schema

        before, after = upgrade_schema(url)
        if before == after:
            click.echo(f"PostgreSQL schema is at version {after}: nothing to do")
        else:
            click.echo(f"PostgreSQL schema upgraded from version {before} to {after}")
        return
    from fleet.store.factory import open_store

    async def check() -> None:
        store = await open_store(url, redis=config.store_redis)
        await store.close()

    run_async(check())
    click.echo("the store migrates itself when opened: nothing to do")
