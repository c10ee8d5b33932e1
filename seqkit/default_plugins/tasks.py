"""Built-in tasks and their commands, registered through the same hooks plugins use."""

import seqkit
from seqkit.cli.tasks import generate_cmd, tag_cmd, transcribe_cmd, tune_decoder_cmd
from seqkit.models.lm import LanguageModelTask
from seqkit.models.speech import TranscriptionTask
from seqkit.models.tagging import TaggingTask


@seqkit.hookimpl
def register_tasks(register):
    register("tagging", TaggingTask)
    register("transcription", TranscriptionTask)
    register("language-model", LanguageModelTask)


@seqkit.hookimpl
def register_commands(cli):
    for command in (tag_cmd, transcribe_cmd, tune_decoder_cmd, generate_cmd):
        cli.add_command(command)
