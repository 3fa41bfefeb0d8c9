from s2_vllm.cli import cli

if __name__ == "__main__":
    cli()
