//! Ties the sled database to a file beside it, because sled opens a garbage or
//! truncated data file as an empty (or older) database without an error.
//!
//! At creation a random id goes into sled and, once that is durable, into
//! `<data dir>/raft/store-id`. From then on the two must match: a db without
//! the id has lost its contents, and starting from it would forget votes and
//! acknowledged log entries.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::Path;

use crate::durable::DurableDb;
use crate::error::OpenError;

const FILE: &str = "store-id";
const TEMP: &str = "store-id.tmp";
const KEY: &[u8] = b"store_id";

pub(crate) fn check(db: &DurableDb) -> Result<(), OpenError> {
    let path = db.path();
    let in_file = match fs::read_to_string(path.join(FILE)) {
        Ok(id) => Some(id.trim().to_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(OpenError::from_io(path, e)),
    };
    let in_db =
        db.db().get(KEY).map_err(|e| OpenError::corrupt(path, e))?.map(|id| String::from_utf8_lossy(&id).into_owned());

    match (in_file, in_db) {
        (Some(file), Some(stored)) if file == stored => Ok(()),
        (Some(file), Some(stored)) => Err(OpenError::corrupt(
            path,
            format!("its database has store id {stored} but {FILE} says {file}: the two come from different data dirs"),
        )),
        (Some(file), None) => Err(OpenError::corrupt(
            path,
            format!("its database has lost its contents (store id {file} is missing from it): the db file was truncated or overwritten"),
        )),
        // A crash came between making the id durable in sled and writing the file.
        (None, Some(stored)) => write_file(path, &stored).map_err(|e| OpenError::from_io(path, e)),
        (None, None) => {
            let id = uuid::Uuid::new_v4().to_string();
            db.db()
                .insert(KEY, id.as_bytes())
                .map_err(|e| OpenError::from_io(path, e.into()))?;
            db.sync()
                .and_then(|()| write_file(path, &id))
                .map_err(|e| OpenError::from_io(path, e))
        }
    }
}

fn write_file(dir: &Path, id: &str) -> io::Result<()> {
    let temp = dir.join(TEMP);
    let mut file = File::create(&temp)?;
    file.write_all(id.as_bytes())?;
    file.sync_all()?;
    fs::rename(&temp, dir.join(FILE))?;
    File::open(dir)?.sync_all()
}
