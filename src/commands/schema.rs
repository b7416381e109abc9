//! `spot schema`: print or write the JSON Schemas.

use std::io::Write as _;

use crate::cli::{SchemaArgs, SchemaFile};
use crate::error::Error;
use crate::schema;

pub fn run(args: &SchemaArgs) -> Result<(), Error> {
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create", e))?;
        for (name, value) in
            [("config.schema.json", schema::config()), ("deployment.schema.json", schema::deployment())]
        {
            let path = dir.join(name);
            std::fs::write(&path, format!("{value:#}\n")).map_err(|e| Error::io(&path, "write", e))?;
        }
        return Ok(());
    }
    let value = match args.which {
        Some(SchemaFile::Config) => schema::config(),
        Some(SchemaFile::Deployment) => schema::deployment(),
        None => {
            serde_json::json!({ "config.yaml": schema::config(), "deployment.yaml": schema::deployment() })
        }
    };
    writeln!(std::io::stdout(), "{value:#}").map_err(|e| Error::io("stdout", "write to", e))
}
