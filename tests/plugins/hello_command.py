"""A plugin that adds a command to the CLI."""

import click

import seqkit


@seqkit.hookimpl
def register_commands(cli):
    @cli.command()
    @click.argument("name")
    def hello(name):
        """Say hello."""
        click.echo(f"hello {name}")
